"""``python -m genctl`` — used by ``torchrun --nproc-per-node N -m genctl train RECIPE``."""

from genctl.cli import main

if __name__ == "__main__":
    main()

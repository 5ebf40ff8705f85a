"""The code of a genctl logged model (MLflow's "models from code": nothing is pickled).

MLflow runs this file when it loads the model; it only hands MLflow genctl's pyfunc, defined in
:func:`genctl.tracking.pyfunc_model`. genctl imports it never.
"""

from genctl.tracking import pyfunc_model

pyfunc_model()

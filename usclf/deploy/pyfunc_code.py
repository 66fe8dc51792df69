"""MLflow "models from code" definition of a usclf pyfunc model (executed by mlflow.pyfunc.load_model)."""
import mlflow

from usclf.deploy.pyfunc import UsclfPyfunc

mlflow.models.set_model(UsclfPyfunc())

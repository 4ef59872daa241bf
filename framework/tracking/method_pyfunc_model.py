"""The MLflow pyfunc of a method whose ``MLflowModel.pyfunc`` is a ``PythonModel`` class rather than a
models-from-code file (docs/write_a_method.md), itself logged as *models from code*.

``framework.tracking.registry.log_and_register`` logs this file with the model config key
``pyfunc_class`` = ``"<module>:<class>"`` and ships the class's module as code; at load time this
file imports the class, builds it without arguments, and hands it every call. Nothing is pickled.
Imports MLflow only; the class imports what it needs.
"""

from __future__ import annotations

import importlib

import mlflow
from mlflow.pyfunc import PythonModel

PYFUNC_CLASS_KEY = "pyfunc_class"


class MethodPyfunc(PythonModel):
    """Delegates load_context and predict to the method's own PythonModel class."""

    def load_context(self, context) -> None:
        target = (context.model_config or {}).get(PYFUNC_CLASS_KEY)
        if not target or ":" not in target:
            raise ValueError(f"model config {PYFUNC_CLASS_KEY}={target!r} does not name a PythonModel class "
                             "('module:Class'). Fix: log the model with framework.tracking.registry.log_and_register")
        module, _, qualname = target.partition(":")
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        self.inner = obj()
        self.inner.load_context(context)

    def predict(self, context, model_input, params: dict | None = None):
        return self.inner.predict(context, model_input, params=params)


mlflow.models.set_model(MethodPyfunc())

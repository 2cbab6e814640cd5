"""Deployment: export a run into a checked bundle, keep versions in a registry, serve them, log predictions.

Its public names, imported on first use (so `import core.deploy.<module>` stays light):
  bundle: Bundle, BundleError, OnnxModel
  export: ExportError, ExportResult, export_run
  registry: ModelVersion, NotInRegistry, Registry, RegistryError
  predlog: PredictionLog
  predictor: Prediction, Predictor
  server: ServeConfig, create_app
"""
from __future__ import annotations

from core.lazy import lazy_getattr

_EXPORTS = {  # name -> the module of this package that defines it
    "Bundle": ".bundle",
    "BundleError": ".bundle",
    "OnnxModel": ".bundle",
    "ExportError": ".export",
    "ExportResult": ".export",
    "export_run": ".export",
    "ModelVersion": ".registry",
    "NotInRegistry": ".registry",
    "Registry": ".registry",
    "RegistryError": ".registry",
    "PredictionLog": ".predlog",
    "Prediction": ".predictor",
    "Predictor": ".predictor",
    "ServeConfig": ".server",
    "create_app": ".server",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)

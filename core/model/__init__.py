"""Models: the backbone catalog, loading pretrained trunks, preprocessing, the transfer model, checkpoints, licenses.

Its public names, imported on first use (so `import core.model.<module>` stays light):
  backbones: load_backbone
  catalog: CatalogError, DEFAULT_MODEL, PARAMS_NOTE, list_catalog, resolve_entry
  checkpoint: CheckpointError, load_model
  licenses: license_warning
  preprocess: PreprocessSpec
  transfer: TransferModel
  uploads: CHECKPOINT_SUFFIXES, add_checkpoint, ingest_csv_upload
"""
from __future__ import annotations

from core.lazy import lazy_getattr

_EXPORTS = {  # name -> the module of this package that defines it
    'CHECKPOINT_SUFFIXES': '.uploads',
    'CatalogError': '.catalog',
    'CheckpointError': '.checkpoint',
    'DEFAULT_MODEL': '.catalog',
    'PARAMS_NOTE': '.catalog',
    'PreprocessSpec': '.preprocess',
    'TransferModel': '.transfer',
    'add_checkpoint': '.uploads',
    'ingest_csv_upload': '.uploads',
    'license_warning': '.licenses',
    'list_catalog': '.catalog',
    'load_backbone': '.backbones',
    'load_model': '.checkpoint',
    'resolve_entry': '.catalog',
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)

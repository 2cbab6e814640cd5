"""Data: upload, safe ingest into the content-addressed store, audit, duplicates and related images, leak-free splits.

Its public names, imported on first use (so `import core.data.<module>` stays light):
  audit: audit_dataset
  audit_report: format_report
  duplicates: NEAR_DUPLICATE_DISTANCE
  ingest: demo_dataset, resolve_dataset
  split_data: DataError
  splits: SplitError, read_manifest, split_dataset
  store: DATASET_FILE, list_datasets, load_dataset
  types: ARCHIVE_SUFFIXES, Dataset, IMAGE_SUFFIXES, IngestError, Sample
"""
from __future__ import annotations

from core.lazy import lazy_getattr

_EXPORTS = {  # name -> the module of this package that defines it
    'ARCHIVE_SUFFIXES': '.types',
    'DATASET_FILE': '.store',
    'DataError': '.split_data',
    'Dataset': '.types',
    'IMAGE_SUFFIXES': '.types',
    'IngestError': '.types',
    'NEAR_DUPLICATE_DISTANCE': '.duplicates',
    'Sample': '.types',
    'SplitError': '.splits',
    'audit_dataset': '.audit',
    'demo_dataset': '.ingest',
    'format_report': '.audit_report',
    'list_datasets': '.store',
    'load_dataset': '.store',
    'read_manifest': '.splits',
    'resolve_dataset': '.ingest',
    'split_dataset': '.splits',
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)

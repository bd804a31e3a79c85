"""DICOM ZIP Watcher: ZIP exports dropped in a folder, stored on a PACS by C-STORE, each instance once (deduplicated)."""

__version__ = "0.1.0"

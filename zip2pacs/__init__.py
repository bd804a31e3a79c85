"""DICOM ZIP Watcher: ZIP exports dropped in a folder, stored on a PACS by C-STORE, exactly once."""

__version__ = "0.1.0"

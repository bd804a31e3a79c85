#!/usr/bin/env python3
"""DICOM ZIP Watcher: `python dicom_zip_watcher.py config.yaml` (see README.md)."""

import sys

from zip2pacs.cli import main

if __name__ == "__main__":
    sys.exit(main())

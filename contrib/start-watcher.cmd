@echo off
rem Start DICOM ZIP Watcher inside WSL at Windows logon (Task Scheduler: "At log on", run this file).
rem Adjust the distribution name and the folder where the watcher lives inside WSL.
wsl.exe -d Ubuntu --cd ~/dicom-zip-watcher -- .venv/bin/python dicom_zip_watcher.py config.yaml

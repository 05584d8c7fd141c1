from datasetd.cli import entry

entry()

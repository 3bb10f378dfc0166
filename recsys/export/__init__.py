"""TorchScript export of trained models for online scoring (see `recsys.export.exporter`)."""

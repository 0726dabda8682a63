"""edgeclean: data-free backdoor removal and compression of CNNs for small devices.

The public API is imported lazily so that the runtime/bench side (``edgeclean bench``) works in
an image without torch.
"""

__version__ = "0.1.0"

_API = {
    "ModelSpec": "load",
    "load_suspect": "load",
    "input_model": "load",
    "create_model": "zoo",
    "list_models": "zoo",
    "load_dataset": "data",
    "parse_dataset": "data",
    "clean_subset": "data",
    "apply_trigger": "attacks",
    "poison_dataset": "attacks",
    "poisoned_test_set": "attacks",
    "TrainConfig": "train",
    "train_suspect": "train",
    "evaluate": "metrics",
    "der": "metrics",
    "synthesize": "synth",
    "SynthConfig": "synth",
    "probe": "probe",
    "ProbeConfig": "probe",
    "universal_perturbation": "probe",
    "grating_probe": "probe",
    "GratingConfig": "probe",
    "UniversalConfig": "scan",
    "scan": "scan",
    "ScanConfig": "scan",
    "ScanResult": "scan",
    "NGFConfig": "ngf",
    "ngf_finetune": "ngf",
    "FinetuneConfig": "ngf",
    "finetune_baseline": "ngf",
    "CLPConfig": "clp",
    "clp": "clp",
    "export_onnx": "export",  # edgeclean.export / edgeclean.bench are the modules themselves
    "ExportConfig": "export",
    "Int8Config": "export",
    "quantize_int8": "export",
    "choose_precision": "export",
    "fold_batchnorm": "export",
    "benchmark": "bench",
    "clean_and_compact": "cc",
    "CCConfig": "cc",
    "PatchConfig": "unlearn",
    "save_cleaned": "cc",
    "parse_budget": "ranks",
    "estimate_bytes": "ranks",
    "ScaleConfig": "scaling",
    "build_factorized": "factorize",
}

__all__ = [*_API, "__version__"]


def __getattr__(name):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'edgeclean' has no attribute {name!r}")

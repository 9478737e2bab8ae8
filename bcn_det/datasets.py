"""Checks of the datasets a config names, made before any work starts."""
import os


def check_datasets(names) -> None:
    """A dataset whose files are missing fails here, naming them and the fix, before any work."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    for name in names:
        if name not in DatasetCatalog.list():
            raise SystemExit(f"dataset {name!r} is not registered (known: e.g. coco_2017_train, "
                             "coco_2017_val, bcn_toy_coco_train)")
        if name.startswith("bcn_toy_"):
            continue  # generated on first use
        meta = MetadataCatalog.get(name)
        for key in ("json_file", "image_root"):
            path = meta.get(key, None)
            if path and "://" not in path and not os.path.exists(path):
                raise SystemExit(
                    f"dataset {name!r}: {key} {path} does not exist. detectron2 reads its builtin "
                    "datasets under $DETECTRON2_DATASETS (now "
                    f"{os.environ.get('DETECTRON2_DATASETS', 'datasets')}), e.g. coco/annotations "
                    "and coco/val2017 there")

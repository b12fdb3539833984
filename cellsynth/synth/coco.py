"""COCO instances of a synthetic dataset: one RLE annotation per cell (``annotations.json``)."""

from __future__ import annotations

import numpy as np

from cellsynth import __version__
from cellsynth.errors import CellsynthError


def coco_annotations(labels: np.ndarray) -> list[dict]:
    """One COCO annotation (without ids) per label 1..N: RLE segmentation, area, bbox.

    Needs pycocotools (the ``benchmark`` extra).
    """
    try:
        from pycocotools import mask as mask_utils
    except ImportError:
        raise CellsynthError(
            "writing annotations.json needs pycocotools; install it with "
            "`pip install pycocotools` (or `pip install cellsynth[benchmark]`)"
        ) from None
    from scipy import ndimage

    anns = []
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        m = np.asfortranarray((labels == i).astype(np.uint8))
        rle = mask_utils.encode(m)
        y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
        anns.append(
            {
                "label": i,
                "segmentation": {
                    "size": [int(s) for s in rle["size"]],
                    "counts": rle["counts"].decode("ascii"),
                },
                "area": int(m.sum()),
                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
            }
        )
    return anns


def build_coco(records: list[dict], anns_by_seed: dict[int, list[dict]], seed_index) -> dict:
    """COCO document: images in seed-list order (id = position + 1), annotations numbered in
    that order, then by label."""
    images, annotations = [], []
    for rec in sorted(records, key=lambda r: seed_index[r["seed"]]):
        image_id = seed_index[rec["seed"]] + 1
        images.append(
            {
                "id": image_id,
                "file_name": f"images/{rec['name']}.tif",
                "height": rec["height"],
                "width": rec["width"],
                "seed": rec["seed"],
            }
        )
        for a in anns_by_seed[rec["seed"]]:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "iscrowd": 0,
                    "instance_id": a["label"],
                    "segmentation": a["segmentation"],
                    "area": a["area"],
                    "bbox": a["bbox"],
                }
            )
    return {
        "info": {"description": "cellsynth synthetic cells", "version": __version__},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "cell", "supercategory": "cell"}],
    }


def annotations_by_seed(coco: dict) -> dict[int, list[dict]]:
    """The per-sample annotations (as :func:`coco_annotations` gives them) of a COCO document
    written by :func:`build_coco`, by seed; the inverse of :func:`build_coco`."""
    by_image = {img["id"]: img["seed"] for img in coco["images"]}
    anns: dict[int, list] = {img["seed"]: [] for img in coco["images"]}
    for a in coco["annotations"]:
        anns[by_image[a["image_id"]]].append(
            {
                "label": a["instance_id"],
                "segmentation": a["segmentation"],
                "area": a["area"],
                "bbox": a["bbox"],
            }
        )
    for v in anns.values():
        v.sort(key=lambda a: a["label"])
    return anns

"""Mesmer (Greenwald, Miller et al., Nature Biotechnology 2022): DeepCell's pretrained
whole-cell and nuclear segmentation network, used as it is (inference only; no training).

The network is always DeepCell's own: the ``MultiplexSegmentation`` model (a PanopticNet on two
input channels, nuclear and membrane, at 0.5 um per pixel) from a local folder named by option
``model``. Its weights need a DeepCell licence key to download, so nothing is downloaded here:
without ``model``, or with a path that holds no model, ``mesmer`` stops with one line saying
what to put where.

Two ways to run it:

- where the ``deepcell`` package imports (deepcell 0.12 needs Python < 3.11, so a user on an
  older Python), the model is loaded with ``tf.keras`` and run by ``deepcell.applications.Mesmer``
  (its own resampling, pre-processing, tiling and post-processing);
- otherwise (this project's Python 3.11, numpy 2, Keras 3) the model runs on TensorFlow
  directly (a SavedModel folder through ``tf.saved_model.load`` and its ``serving_default``
  signature, or a ``.keras`` / ``.h5`` file through ``keras.models.load_model``), and Mesmer's
  documented pre- and post-processing are written here, from deepcell-tf's
  ``deepcell/applications/mesmer.py`` and ``application.py`` and deepcell-toolbox's
  ``processing.py``, ``deep_watershed.py`` and ``utils.py`` (read, not copied):

  1. resampling to the model's 0.5 um/px when ``image_mpp`` is given (bilinear; the labels go
     back to the image's size by nearest neighbour), none when it is not, as in DeepCell;
  2. per channel: the values above the 99.9th percentile of the non-zero pixels clipped to it,
     a min-max rescale to [0, 1] and CLAHE (scikit-image's ``equalize_adapthist``, kernel 128);
     a constant channel becomes zeros (so the membrane channel of a nuclei-only image stays 0);
  3. tiles of the model's input size (256 for Mesmer; option ``tile`` for a model of any size)
     overlapping by a quarter of a tile (DeepCell's stride ratio 0.75), images smaller than a
     tile reflect-padded; the overlaps are blended with linear ramps (DeepCell uses spline
     windows: this blending is written here);
  4. deep watershed: regional maxima of height ``maxima_threshold`` (``h_maxima`` with a disk of
     ``radius``) of the inner-distance map are the markers, a watershed of the (Gaussian
     smoothed) interior probability inside ``interior > interior_threshold`` grows them,
     objects under ``small_objects_threshold`` pixels are dropped and holes under
     ``fill_holes_threshold`` pixels inside an object are filled. The defaults are Mesmer's
     (``Mesmer.predict``): maxima 0.1 (whole-cell 0.075), interior 0.2, interior smoothing 2,
     maxima smoothing 0, radius 2, small objects 15, holes 15.

Output mapping (deepcell-tf's ``format_output_mesmer`` and PanopticNet, whose heads are the
layers ``semantic_0`` .. ``semantic_3`` in this order): output 0 is the whole-cell inner
distance (1 channel), output 1 the whole-cell pixelwise classes (3 channels, softmax; channel 1
is the interior), output 2 the nuclear inner distance (1 channel) and output 3 the nuclear
pixelwise classes (3 channels, channel 1 the interior). A SavedModel's outputs are put in order
by the number their names end with (``semantic_N`` in Mesmer's own folder, ``output_N`` in a
Keras 3 export); a Keras file's in its outputs' order. The channel counts (1, 3, 1, 3) are
checked.

Images: H x W (one channel, e.g. nuclei) goes in the nuclear channel with zeros in the membrane
channel; H x W x 2 is (nuclear, membrane), DeepCell's order; an RGB(A) image's colour channels
are averaged into the nuclear channel. ``compartment`` (``nuclear``, the default, since the
benchmark's objects are nuclei; or ``whole-cell``) chooses which pair of outputs makes the
labels.

Saved models are the options only (``options.json`` naming the model folder): the weights stay
where the user put them.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

import numpy as np

from cellsynth.benchmark.segmenters._tfutil import import_tensorflow, set_tensorflow_threads
from cellsynth.benchmark.segmenters.base import Segmenter, register
from cellsynth.errors import CellsynthError, first_line
from cellsynth.tools.labels import drop_small_objects, relabel_sequential

INSTALL = "pip install 'cellsynth[stardist]'"  # the extra that brings tensorflow-cpu
MODEL_MPP = 0.5  # um per pixel of Mesmer's training data (Mesmer(model_mpp=0.5))
MODEL_HINT = (
    "the unpacked MultiplexSegmentation SavedModel folder (DeepCell needs a licence key to "
    "download it; nothing is downloaded here)"
)
OUTPUT_CHANNELS = (1, 3, 1, 3)  # whole-cell inner distance, pixelwise; nuclear the same
COMPARTMENTS = {"nuclear": (2, 3), "whole-cell": (0, 1)}  # -> (inner distance, pixelwise)
INTERIOR = 1  # the interior channel of a pixelwise output (border, interior, background)
# Mesmer.predict's post-processing defaults per compartment (maxima_threshold differs)
POSTPROCESS = {
    "nuclear": {"maxima_threshold": 0.1},
    "whole-cell": {"maxima_threshold": 0.075},
}
POSTPROCESS_KEYS = (
    "maxima_threshold",
    "maxima_smooth",
    "interior_threshold",
    "interior_smooth",
    "small_objects_threshold",
    "fill_holes_threshold",
    "radius",
)


def _import_tf():
    """TensorFlow (after torch, see _tfutil.import_tensorflow), its threads set from
    OMP_NUM_THREADS; one clear line when it is not installed."""
    try:
        tf = import_tensorflow()
    except ImportError as exc:
        raise CellsynthError(f"mesmer needs tensorflow ({exc}); {INSTALL}") from None
    return set_tensorflow_threads(tf)


def deepcell_mesmer():
    """``deepcell.applications.Mesmer`` where the deepcell package imports, else None
    (TensorFlow is imported first, in the order that keeps torch working)."""
    if importlib.util.find_spec("deepcell") is None:
        return None
    try:
        _import_tf()
        return importlib.import_module("deepcell.applications").Mesmer
    except Exception:  # noqa: BLE001  (not installed, or not importable beside this TensorFlow)
        return None


def check_model_path(model) -> Path:
    """The model path of option ``model``, or one line saying what to put there."""
    if not model:
        raise CellsynthError(f"mesmer: needs option model=DIR, {MODEL_HINT}")
    path = Path(model).expanduser()
    if not path.exists():
        raise CellsynthError(f"mesmer: model={model} does not exist; put {MODEL_HINT} there")
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise CellsynthError(
                f"mesmer: model={model} is not a SavedModel folder (no saved_model.pb); "
                f"put {MODEL_HINT} there"
            )
    elif path.suffix.lower() not in (".keras", ".h5"):
        raise CellsynthError(
            f"mesmer: model={model} is neither a SavedModel folder nor a .keras/.h5 file; "
            f"put {MODEL_HINT} there"
        )
    return path


def _order_by_number(names) -> list:
    """Output names in the order of the number they end with (``semantic_2`` -> 2), or sorted
    by name when some have none."""
    numbers = [re.search(r"(\d+)$", str(n)) for n in names]
    if all(numbers):
        return [n for _, n in sorted(zip((int(m.group(1)) for m in numbers), names))]
    return sorted(names)


class MesmerNet:
    """A loaded Mesmer network: ``tile`` (its fixed input side, or None) and a call from an
    N x H x W x 2 float32 batch to its four outputs (N x H x W x C numpy arrays, in Mesmer's
    order: whole-cell inner distance, whole-cell pixelwise, nuclear inner distance, nuclear
    pixelwise)."""

    def __init__(self, path, tf):
        self.path = Path(path)
        self._tf = tf
        what = f"mesmer: model={path}"
        self._keras = self._sig = None
        try:
            if self.path.is_dir():
                self._loaded = tf.saved_model.load(str(self.path))
                self._sig = self._loaded.signatures.get("serving_default")
                if self._sig is None:
                    raise CellsynthError(f"{what} has no serving_default signature")
                specs = self._sig.structured_input_signature[1]
                in_shapes = [tuple(t.shape) for t in specs.values()]
                self._input_name = next(iter(specs), None)
                outputs = self._sig.structured_outputs
                self._names = _order_by_number(list(outputs))
                out_shapes = [tuple(outputs[n].shape) for n in self._names]
            else:
                import keras

                self._keras = keras.models.load_model(str(self.path), compile=False)
                in_shapes = [tuple(t.shape) for t in self._keras.inputs]
                out_shapes = [tuple(t.shape) for t in self._keras.outputs]
        except CellsynthError:
            raise
        except Exception as exc:  # noqa: BLE001  (a broken or foreign model: one line)
            raise CellsynthError(
                f"{what} cannot be loaded ({first_line(exc, type(exc).__name__)}); put "
                f"{MODEL_HINT} there"
            ) from None
        if len(in_shapes) != 1:
            raise CellsynthError(f"{what} takes {len(in_shapes)} inputs; Mesmer takes one")
        shape = in_shapes[0]
        if len(shape) != 4 or shape[-1] != 2:
            raise CellsynthError(
                f"{what} takes input of shape {shape}; Mesmer takes N x H x W x 2 "
                "(nuclear, membrane)"
            )
        channels = tuple(s[-1] if len(s) == 4 else None for s in out_shapes)
        if channels != OUTPUT_CHANNELS:
            raise CellsynthError(
                f"{what} has outputs with {channels} channels; Mesmer has four with "
                f"{OUTPUT_CHANNELS} (whole-cell inner distance, pixelwise; nuclear the same)"
            )
        h, w = shape[1], shape[2]
        if (h is None) != (w is None) or (h is not None and h != w):
            raise CellsynthError(f"{what} takes {h} x {w} tiles; only square tiles are supported")
        self.tile = None if h is None else int(h)

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        tf = self._tf
        batch = tf.constant(np.ascontiguousarray(x, dtype=np.float32))
        if self._keras is not None:
            outs = self._keras(batch, training=False)
            outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
        else:
            result = self._sig(**{self._input_name: batch})
            outs = [result[n] for n in self._names]
        return [np.asarray(o, dtype=np.float32) for o in outs]


# --- pre-processing ------------------------------------------------------------------------------
def two_channels(image: np.ndarray) -> np.ndarray:
    """An H x W (x C) image -> H x W x 2 float32 (nuclear, membrane): one channel goes to the
    nuclear channel beside a zero membrane channel, two channels are (nuclear, membrane), and
    the colour channels of an RGB(A) image are averaged into the nuclear channel."""
    a = np.asarray(image)
    if a.ndim not in (2, 3) or a.size == 0 or (a.ndim == 3 and a.shape[-1] > 4):
        raise CellsynthError(f"mesmer: expected an H x W (x C, C <= 4) image, got {a.shape}")
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise CellsynthError(f"mesmer: unsupported image dtype {a.dtype}")
    a = a.astype(np.float32)
    if a.ndim == 3 and a.shape[-1] == 2:
        return a
    nuclear = a if a.ndim == 2 else a[..., : min(a.shape[-1], 3)].mean(axis=-1)
    return np.stack([nuclear, np.zeros_like(nuclear)], axis=-1)


def resample(x: np.ndarray, shape, order: int) -> np.ndarray:
    """``x`` (H x W (x C)) resized to ``shape`` (H' x W'): bilinear (order 1) for images,
    nearest neighbour (order 0) for labels; no anti-aliasing, as DeepCell's resize."""
    from skimage.transform import resize

    shape = tuple(int(s) for s in shape) + tuple(x.shape[2:])
    if shape == x.shape:
        return x
    out = resize(x, shape, order=order, preserve_range=True, anti_aliasing=False, mode="edge")
    return out.astype(x.dtype) if order else np.rint(out).astype(x.dtype)


def mesmer_preprocess(x: np.ndarray, percentile: float = 99.9, kernel_size=128) -> np.ndarray:
    """Mesmer's normalisation of an H x W x C image, per channel: clip at the ``percentile`` of
    the non-zero values, rescale to [0, 1], CLAHE with ``kernel_size``; a constant channel
    becomes zeros. Returns float32 in [0, 1]."""
    from skimage.exposure import equalize_adapthist

    out = np.zeros(x.shape, dtype=np.float32)
    for c in range(x.shape[-1]):
        ch = np.asarray(x[..., c], dtype=np.float64)
        nonzero = ch[ch != 0]
        if nonzero.size:
            ch = np.minimum(ch, np.percentile(nonzero, percentile))
        lo, hi = float(ch.min()), float(ch.max())
        if hi <= lo:  # constant (also all zeros): zeros
            continue
        out[..., c] = equalize_adapthist((ch - lo) / (hi - lo), kernel_size=kernel_size)
    return out


# --- post-processing -----------------------------------------------------------------------------
def _fill_small_holes(labels: np.ndarray, max_size: int) -> np.ndarray:
    """Background holes of fewer than ``max_size`` pixels (4-connected) that lie wholly inside
    one object are given to that object."""
    from scipy import ndimage as ndi

    if max_size <= 0:
        return labels
    out = labels.copy()
    for idx, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        obj = labels[sl] == idx
        holes = ndi.binary_fill_holes(obj) & ~obj
        if not holes.any():
            continue
        hole_ids, _ = ndi.label(holes)
        small = np.bincount(hole_ids.ravel()) < max_size
        small[0] = False
        patch = out[sl]
        patch[small[hole_ids] & (patch == 0)] = idx
    return out


def deep_watershed(
    inner_distance: np.ndarray,
    interior: np.ndarray,
    maxima_threshold: float = 0.1,
    maxima_smooth: float = 0,
    interior_threshold: float = 0.2,
    interior_smooth: float = 2,
    small_objects_threshold: int = 15,
    fill_holes_threshold: int = 15,
    radius: int = 2,
) -> np.ndarray:
    """Mesmer's post-processing of one image's maps (H x W each) into instance labels.

    Markers: the regional maxima of the (optionally smoothed) inner-distance map that stand at
    least ``maxima_threshold`` above their surroundings (``h_maxima``, a disk of ``radius`` as
    neighbourhood). Objects: a watershed of the interior probability (Gaussian smoothed by
    ``interior_smooth``) from those markers within ``interior > interior_threshold``; objects
    of fewer than ``small_objects_threshold`` pixels are dropped and holes of fewer than
    ``fill_holes_threshold`` pixels filled. Returns uint16/uint32 labels 1..N.
    """
    from scipy import ndimage as ndi
    from skimage.morphology import disk, h_maxima
    from skimage.segmentation import watershed

    maxima = np.asarray(inner_distance, dtype=np.float64)
    inside = np.asarray(interior, dtype=np.float64)
    if maxima.ndim != 2 or maxima.shape != inside.shape:
        raise CellsynthError(
            f"mesmer: the inner-distance and interior maps must be 2-D of one shape, got "
            f"{maxima.shape} and {inside.shape}"
        )
    if maxima_smooth > 0:
        maxima = ndi.gaussian_filter(maxima, maxima_smooth)
    if interior_smooth > 0:
        inside = ndi.gaussian_filter(inside, interior_smooth)
    peaks = h_maxima(maxima, float(maxima_threshold), footprint=disk(int(radius)))
    markers, _ = ndi.label(peaks, structure=np.ones((3, 3), dtype=bool))
    labels = watershed(-inside, markers, mask=inside > interior_threshold)
    labels = drop_small_objects(labels.astype(np.int64), int(small_objects_threshold))
    labels = _fill_small_holes(labels, int(fill_holes_threshold))
    return relabel_sequential(labels)


# --- the segmenter -------------------------------------------------------------------------------
@register
class MesmerSegmenter(Segmenter):
    """DeepCell's Mesmer from a local model (inference only).

    Options: ``model`` (the MultiplexSegmentation SavedModel folder, or a .keras/.h5 file),
    ``compartment`` (``nuclear`` | ``whole-cell``), ``image_mpp`` (the images' um per pixel;
    None: taken as the model's 0.5, no resampling, as DeepCell's default), ``percentile`` and
    ``kernel_size`` (the normalisation), ``tile`` (the tile side for a model whose input size
    is not fixed), the post-processing ``maxima_threshold`` (None: Mesmer's default for the
    compartment), ``maxima_smooth``, ``interior_threshold``, ``interior_smooth``, ``radius``,
    ``small_objects_threshold``, ``fill_holes_threshold``, and ``backend`` (``auto``: DeepCell's
    own application where the deepcell package imports, else the TensorFlow path written here;
    ``deepcell`` or ``tensorflow`` to insist on one).
    """

    name = "mesmer"
    requires = f"tensorflow ({INSTALL}) and a local Mesmer model (option model=DIR)"
    trainable = False
    DEFAULTS = {
        "model": None,
        "compartment": "nuclear",
        "image_mpp": None,
        "percentile": 99.9,
        "kernel_size": 128,
        "tile": 256,
        "maxima_threshold": None,
        "maxima_smooth": 0,
        "interior_threshold": 0.2,
        "interior_smooth": 2,
        "radius": 2,
        "small_objects_threshold": 15,
        "fill_holes_threshold": 15,
        "backend": "auto",
    }

    def __init__(self, **options):
        super().__init__(**options)
        o = self.options
        self.check_choice("compartment", COMPARTMENTS)
        self.check_choice("backend", ("auto", "deepcell", "tensorflow"))
        if o["image_mpp"] is not None and not float(o["image_mpp"]) > 0:
            raise CellsynthError(f"mesmer: image_mpp must be positive, got {o['image_mpp']}")
        if int(o["tile"]) < 16:
            raise CellsynthError(f"mesmer: tile must be at least 16, got {o['tile']}")
        self.net = None
        self._app = None

    def __getstate__(self):  # for Dask: the loaded network is not sent, it reloads on use
        state = dict(self.__dict__)
        state["net"] = state["_app"] = None
        return state

    def postprocess_options(self) -> dict:
        """Mesmer's post-processing keyword arguments for the chosen compartment."""
        o = self.options
        pp = {k: o[k] for k in POSTPROCESS_KEYS}
        if pp["maxima_threshold"] is None:
            pp["maxima_threshold"] = POSTPROCESS[o["compartment"]]["maxima_threshold"]
        return pp

    def backend(self) -> str:
        """``deepcell`` or ``tensorflow``: which of the two ways this segmenter runs."""
        want = self.options["backend"]
        if want == "tensorflow":
            return want
        if deepcell_mesmer() is not None:
            return "deepcell"
        if want == "deepcell":
            raise CellsynthError(
                "mesmer: backend=deepcell but the deepcell package does not import here "
                "(deepcell 0.12 needs Python < 3.11); use backend=auto"
            )
        return "tensorflow"

    def _ensure_model(self):
        """Load the model (once); returns the MesmerNet, or the deepcell application."""
        path = check_model_path(self.options["model"])
        if self.backend() == "deepcell":
            if self._app is None:
                self._app = deepcell_mesmer()(model=load_keras_model(path))
            return self._app
        if self.net is None:
            self.net = MesmerNet(path, _import_tf())
        return self.net

    def fit(self, train, workdir=None, budget_minutes=None, epochs=None, progress=True) -> None:
        """Nothing to train: loads the model (so a missing one fails here) and records it."""
        self._ensure_model()
        self.info = {
            "pretrained": str(self.options["model"]),
            "backend": self.backend(),
            "steps": 0,
            "seconds": 0.0,
        }

    def predict(self, image: np.ndarray) -> np.ndarray:
        x = two_channels(image)
        runner = self._ensure_model()
        if runner is self._app:
            return self._predict_deepcell(x)
        return self._predict_tensorflow(x)

    def _predict_deepcell(self, x: np.ndarray) -> np.ndarray:
        o = self.options
        key = "postprocess_kwargs_" + ("nuclear" if o["compartment"] == "nuclear" else "whole_cell")
        out = self._app.predict(
            x[None],
            image_mpp=None if o["image_mpp"] is None else float(o["image_mpp"]),
            compartment=o["compartment"],
            preprocess_kwargs={"percentile": o["percentile"], "kernel_size": o["kernel_size"]},
            **{key: self.postprocess_options()},
        )
        out = np.asarray(out)
        return relabel_sequential(out.reshape(out.shape[-3:-1]) if out.ndim > 2 else out)

    def maps(self, x: np.ndarray) -> np.ndarray:
        """The chosen compartment's inner-distance and interior maps (2 x H' x W' float32) of a
        pre-processed H' x W' x 2 image, tiled over the network."""
        from cellsynth.benchmark.segmenters._torchutil import predict_tiled

        net = self.net
        inner, pixelwise = COMPARTMENTS[self.options["compartment"]]

        def run(tile):  # 1 x 2 x h x w -> 1 x 2 x h x w
            outs = net(np.moveaxis(tile, 1, -1))
            a, b = outs[inner], outs[pixelwise]
            if a.shape[1:3] != tile.shape[2:] or b.shape[1:3] != tile.shape[2:]:
                raise CellsynthError(
                    f"mesmer: model={self.options['model']} gives {a.shape[1:3]} outputs for "
                    f"{tile.shape[2:]} inputs; Mesmer's outputs have its input's size"
                )
            return np.stack([a[..., 0], b[..., INTERIOR]], axis=1)

        tile = net.tile or int(self.options["tile"])
        return predict_tiled(run, np.moveaxis(x, -1, 0), tile=tile, overlap=tile // 4, multiple=1)

    def _predict_tensorflow(self, x: np.ndarray) -> np.ndarray:
        o = self.options
        h, w = x.shape[:2]
        if o["image_mpp"] is not None and float(o["image_mpp"]) != MODEL_MPP:
            scale = float(o["image_mpp"]) / MODEL_MPP
            x = resample(x, (max(1, int(h * scale)), max(1, int(w * scale))), order=1)
        x = mesmer_preprocess(x, float(o["percentile"]), o["kernel_size"])
        inner, interior = self.maps(x)
        labels = deep_watershed(inner, interior, **self.postprocess_options())
        if labels.shape != (h, w):
            labels = relabel_sequential(resample(labels, (h, w), order=0))
        return labels

    @classmethod
    def load(cls, path) -> MesmerSegmenter:
        seg = super().load(path)
        seg._ensure_model()  # a model that has gone away fails here, in one line
        return seg


def load_keras_model(path: Path):
    """The model at ``path`` as a ``tf.keras`` model, for DeepCell's application."""
    tf = _import_tf()
    try:
        return tf.keras.models.load_model(str(path), compile=False)
    except Exception as exc:  # noqa: BLE001
        raise CellsynthError(
            f"mesmer: model={path} cannot be loaded by tf.keras "
            f"({first_line(exc, type(exc).__name__)}); put {MODEL_HINT} there"
        ) from None

"""``cellsynth dataset``: import real data, pack GAN training sets, simulate the default data.

The sub-commands live in their own modules (``dataset_import``, ``dataset_pack``,
``dataset_simulate``) and are attached here.
"""

import importlib

import click


@click.group()
def dataset():
    """Import, pack and simulate datasets (the dataset tool)."""


for _module, _name in (
    ("cellsynth.cli.dataset_import", "import_cmd"),
    ("cellsynth.cli.dataset_pack", "pack"),
    ("cellsynth.cli.dataset_simulate", "simulate"),
):
    try:
        dataset.add_command(getattr(importlib.import_module(_module), _name))
    except ModuleNotFoundError as _exc:
        if _exc.name != _module:
            raise

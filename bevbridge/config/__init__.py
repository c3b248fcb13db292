"""Configuration: the YAML loader (``loader.py``) and the experiment schema (``schema.py``).

    from bevbridge.config import load_config
    cfg = load_config("configs/ctab/mtl_ctab.yaml", ["optim.lr=2e-4"])     # an ExperimentConfig

- ``loader.py``: YAML -> dataclasses: ``_base_`` inheritance, dotted overrides, validation with one-line errors.
  Knows nothing of bevbridge's sections.
- ``schema.py``: what an experiment YAML may contain (``data``, ``optim``, ``schedule``, ``train``, ``eval``) and
  the ``model`` section, one schema per method, chosen by ``model.kind``; each method's schema lives beside the
  method (``bevbridge/models/<method>/config.py``, ``bevbridge/recipes/<recipe>/config.py``).
- The builder that turns a config into objects is ``bevbridge/engine/build.py``.
"""

from bevbridge.config.loader import (ConfigError, apply_override, dump_config, from_dict, load_config, load_yaml_tree,
                                     save_config, to_dict)

__all__ = ["ConfigError", "load_config", "load_yaml_tree", "from_dict", "to_dict", "save_config", "dump_config",
           "apply_override"]

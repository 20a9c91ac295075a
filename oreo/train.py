"""``python -m oreo.train [key=value ...] [+experiment=NAME]``: run the configured stages (conf/config.yaml)."""
from __future__ import annotations

import os

import hydra
from omegaconf import DictConfig, OmegaConf

from oreo.distributed import rank_world

CONF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    from oreo.pipeline import Run

    if rank_world()[0] == 0:
        print(OmegaConf.to_yaml(cfg, resolve=True))
    Run(cfg).run()


if __name__ == "__main__":
    main()

"""``python -m oreo.train [key=value ...] [+experiment=NAME]``: run the configured stages (``RunConfig``)."""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from oreo.distributed import rank_world
from oreo.run_config import CONF_DIR, run_config, to_yaml


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    from oreo.pipeline import Run

    cfg = run_config(cfg)
    if rank_world()[0] == 0:
        print(to_yaml(cfg))
    Run(cfg).run()


if __name__ == "__main__":
    main()

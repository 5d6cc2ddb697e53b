#!/usr/bin/env bash
# Run by Snakemake after it creates envs/mm.yaml: mmpose without its declared dependencies (chumpy does
# not build; torchvision is already there), then the ones it imports.
set -euo pipefail
pip install --no-deps mmpose==1.3.2 xtcocotools==1.14.3 json_tricks==3.17.3 munkres==1.1.4

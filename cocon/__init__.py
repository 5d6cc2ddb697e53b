"""cocon-pipeline: CoCon (cooperative-contrastive multi-view video learning) as a Snakemake workflow.

Stages are modules run as ``python -m cocon.<stage>``; see README.md and docs/.
"""

__version__ = "0.1.0"

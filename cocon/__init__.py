"""cocon-pipeline: CoCon (cooperative-contrastive multi-view video learning) as a Snakemake workflow.

Every stage is a command of the one command line, ``cocon <command>`` (``python -m cocon <command>``,
cocon/cli.py); see README.md and docs/.
"""

__version__ = "0.1.0"

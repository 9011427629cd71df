"""The inbound pipeline (docs/pipeline.md): the chain that runs the stages (``chain``) and the
built-in stages, one a module: ``ratelimit``, ``limits``, ``filter``."""

from .chain import Pipeline, build_pipeline

__all__ = ["Pipeline", "build_pipeline"]

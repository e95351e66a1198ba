"""seqlake: user behaviour sequence analysis at data-lake scale on Spark and Delta Lake."""

__version__ = "0.1.0"

"""genrec: a generative recommender for advertising (UA-SID, VISTA, LazyAR, RSPO, DARE)."""

__version__ = "0.1.0"

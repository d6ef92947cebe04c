"""The paper's analyses that need their own runs (Fig. 5: IGR against ERM on one task sequence).

Fig. 4 (dissimilarity against class overlap and architecture) comes from ``dfmeta group`` (its ``analysis.json``),
Fig. 6 (accuracy against the number of teachers) from ``dfmeta train --zoo-size``; ``dfmeta report`` renders all.
"""

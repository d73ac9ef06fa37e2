"""The linear datamodeling score (LDS): random training subsets, the outcomes of retraining on each, and how well
summed attributions predict them (docs/study.md#lds-the-linear-datamodeling-score).

Subsets: S masks over the N training samples, each holding exactly round(alpha N) of them, drawn with a seeded
generator. Retraining on subset s gives its samples the per-sample loss weight 1 and every other sample 0, each
batch mean still divided by the batch's full size (as LOO removes one sample), from the seed's initialisation on
the seed's own batches; so the S retrainings, and a control member that keeps every sample, are one ensemble.
The outcome of test sample i is its loss and its correct-class margin log(p_i / (1 - p_i)) (TRAK's) after each
checkpoint epoch.

For attributions tau [N, M] whose sign is +1 when a positive score means "j helps i" (-1 for ATS and IF):

    p_i(s) = sign * sum_{j in S_s} tau(j, i)               the predicted help of subset s
    o_i(s) = -L_i(theta_s)   or   margin_i(theta_s)         the observed help (a lower loss, a higher margin)
    LDS_i  = Spearman correlation over s of p_i and o_i;    LDS = mean of LDS_i over test samples i

The modules: `ensemble` (subsets and the masked ensemble that retrains on all of them at once, in torch), `score`
(the statistic and its variants, numpy float64 over arrays), `run` (per seed: subsets and outcomes on disk, with
provenance; `run_lds.py`), `evaluate` (every method's LDS table and figure) and `report` (its sections in the
experiment's report and in `run_summary.py`).
"""

"""The study beyond the paper: what the seed noise of an attribution is made of (initialisation vs batch order),
and which conclusions survive a clean ground truth (LOO protocols) and a converged IF (CG on the Gauss-Newton
matrix). `python run_study.py [--quick]`; see docs/study.md.

plan: the grid as entry-script steps and its cost; workspace: the study's own root, its arms, running a
step; decompose, compare: the maths; analysis: the tables; figures, report: what results/study/ holds;
run: the command.
"""

"""bayes-tda: training data attribution as a random variable over a posterior of models."""

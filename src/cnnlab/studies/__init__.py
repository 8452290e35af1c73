"""Studies built on trained models and on the trainer: evaluating and predicting with a trained
model (eval, predict), the learning-rate range test, k-fold cross-validation and the d2l
reproduction."""

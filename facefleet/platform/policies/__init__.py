"""Retrain policies: when to retrain (triggers), on what (dataset selector), how (base config), and after."""

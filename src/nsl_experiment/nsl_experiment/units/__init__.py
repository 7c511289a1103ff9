"""The units of work of the stages: collect, labels, train, evaluate, gate, calibration, study."""

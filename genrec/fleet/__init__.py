"""A day of a predictor fleet, simulated second by second: ad traffic (`traffic`), replicas that
behave as the load test measured them (`replica`), KEDA and the HPA with their timing (`autoscaler`),
and the beam controller's own control law (`simulate` imports `genrec.controller.law.decide`, the
function the controller process runs). benchmarks/bench_fleet.py compares the scaling policies."""

"""What tests and benchmarks run against, outside the library: real servers started on loopback
(`genrec serve`, Prometheus, Redis) and tiny trained models to serve.

| module | what it starts or builds |
| --- | --- |
| `serving` | a tiny trained model (cached per machine), a feature repo for it, a `genrec serve` process |
| `prometheus` | a Prometheus process scraping given targets |
| `redis` | a redis-server process that can be stopped and restarted on its port |
| `binaries` | the server binaries (a test skips, or fails in CI, without one) |
"""

"""The Prometheus-driven beam-width controller: a process of its own (`genrec controller`), with its
own Deployment, metrics port and state file.

| module | what it does |
| --- | --- |
| `law` | the control law, a pure function of state, observation and time |
| `prometheus` | the queries and the observation they make |
| `replicas` | replica discovery (static list, Kubernetes Endpoints) and pushing the rung |
| `state` | what survives a restart |
| `metrics` | the controller's own metrics |
| `loop` | one interval after another |
| `cli` | `genrec controller` |

What it shares with the predictor (the admin path and body, the metric names) is `genrec.contract`.
"""

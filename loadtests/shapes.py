"""A step ramp that finds each variant's saturation point: add to -f after the locustfile.

    locust -f loadtests/locustfile.py,loadtests/shapes.py --headless --host ... \
        --step-users 4 --step-seconds 10 --steps 6
"""

from __future__ import annotations

from typing import Any

from locust import LoadTestShape, events


@events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    group = parser.add_argument_group("xnli-serve step ramp")
    group.add_argument("--step-users", type=int, default=4, help="Users added at each step")
    group.add_argument("--step-seconds", type=float, default=10.0, help="Duration of each step")
    group.add_argument("--steps", type=int, default=5, help="Number of steps; the run stops after the last")


class StepLoadShape(LoadTestShape):
    def tick(self) -> tuple[int, float] | None:
        options = self.runner.environment.parsed_options if self.runner else None
        step_users = options.step_users if options else 4
        step_seconds = options.step_seconds if options else 10.0
        steps = options.steps if options else 5
        step = int(self.get_run_time() // step_seconds)
        if step >= steps:
            return None
        users = step_users * (step + 1)
        return users, float(users)

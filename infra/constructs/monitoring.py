"""The operator's view: a CloudWatch dashboard and alarms whose actions go to the outcome topic.

Built from L2 constructs (``aws_cloudwatch``), not cdk-monitoring-constructs: the set is small (five alarms, one
dashboard), every metric is autostop's own or an L2 ``metric_*`` helper, and one more jsii library (with its own
aws-cdk-lib version range and Node bundle) would cost more in install time and upgrade coupling than the forty
lines below. Metrics come from the functions (Powertools EMF, namespace ``Autostop``, dimension ``service`` =
``autostop``): ``Outcomes`` (dimensions ``outcome``; and ``outcome``, ``reason_class``, ``trigger``),
``Evaluations`` (``decision``, ``trigger``), ``CheckpointBytes``, ``DecisionToVerifiedSeconds``,
``VerifiedToStoppedSeconds``.
"""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from lambdas.shared import constants as c

NAMESPACE = "Autostop"
SERVICE = {"service": "autostop"}
FIVE_MINUTES = Duration.minutes(5)
ALARMED_OUTCOMES = tuple(sorted(c.FAILED_OUTCOMES))
"""Outcomes that leave an instance billing without a verified checkpoint, or a verified one still running."""
SWEEP_TIMEOUT_SHARE = 0.8
"""The sweep alarm fires when its longest run in five minutes passes this share of its timeout."""


def outcome_metric(outcome: str, statistic: str = "Sum") -> cw.Metric:
    """``Outcomes`` of one outcome (dimensions ``service``, ``outcome``), per five minutes."""
    return cw.Metric(
        namespace=NAMESPACE,
        metric_name="Outcomes",
        dimensions_map={**SERVICE, "outcome": outcome},
        statistic=statistic,
        period=FIVE_MINUTES,
    )


def search(metric: str, dimensions: str, label: str, statistic: str = "Sum") -> cw.MathExpression:
    """A SEARCH over autostop's metric ``metric`` with the dimension set ``dimensions`` (one line per combination)."""
    expression = f"SEARCH('{{{NAMESPACE},{dimensions}}} MetricName=\"{metric}\"', '{statistic}', 300)"
    return cw.MathExpression(expression=expression, label=label, using_metrics={}, period=FIVE_MINUTES)


class Monitoring(Construct):
    """``alarms`` (name to alarm) and ``dashboard``; every alarm's action (and OK action) publishes to ``topic``."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        topic: sns.ITopic,
        state_machine: sfn.StateMachine,
        functions: dict[str, lambda_.Function],
        sweep: lambda_.Function,
        sweep_timeout: Duration,
        undelivered: sqs.IQueue,
    ) -> None:
        super().__init__(scope, construct_id)
        self.alarms: dict[str, cw.Alarm] = {}
        failed = cw.MathExpression(
            expression="failed + timedout + aborted",
            using_metrics={
                "failed": state_machine.metric_failed(period=FIVE_MINUTES),
                "timedout": state_machine.metric_timed_out(period=FIVE_MINUTES),
                "aborted": state_machine.metric_aborted(period=FIVE_MINUTES),
            },
            label="Executions failed, timed out or aborted",
            period=FIVE_MINUTES,
        )
        self._alarm("ExecutionsFailed", failed, 1, "A lifecycle execution failed, timed out or was aborted: its instance may be billing.")
        outcomes = cw.MathExpression(
            expression=" + ".join(f"FILL(o{i}, 0)" for i in range(len(ALARMED_OUTCOMES))),
            using_metrics={f"o{i}": outcome_metric(o) for i, o in enumerate(ALARMED_OUTCOMES)},
            label="Failed outcomes",
            period=FIVE_MINUTES,
        )
        self._alarm("FailedOutcomes", outcomes, 1, f"An execution ended in {', '.join(ALARMED_OUTCOMES)}: read its notification.")
        self._alarm(
            "UndeliveredEvents",
            undelivered.metric_approximate_number_of_messages_visible(period=FIVE_MINUTES, statistic="Maximum"),
            1,
            "A trigger event failed after retries (the Undelivered dead-letter queue): an instance may not have been evaluated.",
        )
        errors = cw.MathExpression(
            expression=" + ".join(f"FILL(e{i}, 0)" for i in range(len(functions))),
            using_metrics={f"e{i}": fn.metric_errors(period=FIVE_MINUTES) for i, fn in enumerate(functions.values())},
            label="Lambda errors, all autostop functions",
            period=FIVE_MINUTES,
        )
        self._alarm("FunctionErrors", errors, 1, "An autostop function raised an error (its log group has the stack trace).")
        self._alarm(
            "SweepNearTimeout",
            sweep.metric_duration(period=FIVE_MINUTES, statistic="Maximum"),
            sweep_timeout.to_milliseconds() * SWEEP_TIMEOUT_SHARE,
            f"The schedule sweep ran longer than {int(SWEEP_TIMEOUT_SHARE * 100)} % of its timeout: a larger fleet will time it out.",
        )
        for alarm in self.alarms.values():
            alarm.add_alarm_action(cw_actions.SnsAction(topic))
            alarm.add_ok_action(cw_actions.SnsAction(topic))
        self.dashboard = self._dashboard(state_machine, functions, undelivered)

    def _alarm(self, name: str, metric: cw.IMetric, threshold: float, description: str) -> None:
        self.alarms[name] = cw.Alarm(
            self,
            name,
            metric=metric,
            threshold=threshold,
            evaluation_periods=1,
            comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            alarm_description=f"autostop: {description}",
        )

    def _dashboard(self, state_machine: sfn.StateMachine, functions: dict[str, lambda_.Function], undelivered: sqs.IQueue) -> cw.Dashboard:
        board = cw.Dashboard(self, "Dashboard", default_interval=Duration.days(7))
        graph = cw.GraphWidget
        board.add_widgets(
            cw.AlarmStatusWidget(title="Alarms", alarms=list(self.alarms.values()), width=24, height=3),
        )
        board.add_widgets(
            graph(title="Outcomes", left=[search("Outcomes", "outcome,service", "")], width=12, stacked=True),
            graph(title="Outcomes by reason and trigger", left=[search("Outcomes", "outcome,reason_class,trigger", "")], width=12),
        )
        board.add_widgets(
            graph(title="Evaluations by decision and trigger", left=[search("Evaluations", "decision,service,trigger", "")], width=12),
            graph(
                title="Executions",
                left=[
                    state_machine.metric_started(period=FIVE_MINUTES),
                    state_machine.metric_succeeded(period=FIVE_MINUTES),
                    state_machine.metric_failed(period=FIVE_MINUTES),
                    state_machine.metric_timed_out(period=FIVE_MINUTES),
                ],
                width=12,
            ),
        )
        board.add_widgets(
            graph(
                title="Decision to verified, upload, verified to stopped (seconds, p90)",
                left=[
                    search("DecisionToVerifiedSeconds", "outcome,service", "", "p90"),
                    search("UploadSeconds", "outcome,service", "", "p90"),
                    search("VerifiedToStoppedSeconds", "outcome,service", "", "p90"),
                ],
                width=12,
            ),
            graph(title="Checkpoint bytes (sum)", left=[search("CheckpointBytes", "outcome,service", "")], width=12),
        )
        board.add_widgets(
            graph(
                title="Function errors", left=[fn.metric_errors(label=name, period=FIVE_MINUTES) for name, fn in functions.items()], width=8
            ),
            graph(
                title="Function duration (max, ms)",
                left=[fn.metric_duration(label=name, period=FIVE_MINUTES, statistic="Maximum") for name, fn in functions.items()],
                width=8,
            ),
            graph(title="Undelivered trigger events", left=[undelivered.metric_approximate_number_of_messages_visible()], width=8),
        )
        return board

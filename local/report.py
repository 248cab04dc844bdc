"""The report of a local run: instances, executions (with their states in order), objects, notifications,
run records."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from local.aws import REGION
from local.runtime import LocalControlPlane

STATE_ENTERED = "StateEnteredEventDetails"


def execution_states(sfn: Any, arn: str) -> list[dict[str, str]]:
    """Names and types of the states an execution entered, in order (the console's graph, as a list)."""
    states = []
    for page in sfn.get_paginator("get_execution_history").paginate(executionArn=arn):
        for event in page["events"]:
            details = event.get("stateEnteredEventDetails")
            if details:
                states.append({"name": details["name"], "type": event["type"].removesuffix("StateEntered")})
    return states


def outcome_of(describe: dict[str, Any]) -> tuple[str | None, dict[str, Any] | None]:
    """(outcome, output) of a closed execution: output's ``outcome``, or the Fail state's error."""
    output = json.loads(describe["output"]) if describe.get("output") else None
    if isinstance(output, dict) and "outcome" in output:
        return output["outcome"], output
    return describe.get("error"), output


def plain(value: Any) -> Any:
    """A DynamoDB item (as the resource API returns it) as plain JSON: whole Decimals as int, sets as sorted lists."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted(plain(v) for v in value)
    if isinstance(value, bytes | bytearray):
        return value.decode(errors="replace")
    return value


def run_records(cp: LocalControlPlane) -> list[dict[str, Any]]:
    """Every item of the run records table, sorted by instance and run (empty when the stack has no table)."""
    if not cp.deployment.table:
        return []
    import boto3

    table = boto3.resource("dynamodb", region_name=REGION).Table(cp.deployment.table)
    items: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"ConsistentRead": True}
    while True:
        page = table.scan(**kwargs)
        items.extend(plain(i) for i in page.get("Items", []))
        if "LastEvaluatedKey" not in page:
            break
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    return sorted(items, key=lambda i: (str(i.get("instance_id", "")), str(i.get("run", ""))))


def build_report(cp: LocalControlPlane, *, scenario: str = "", steps: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    ec2, sfn, s3 = cp.aws.client("ec2"), cp.aws.client("stepfunctions"), cp.aws.client("s3")
    instances = []
    for name, inst in cp.by_name.items():
        raw = ec2.describe_instances(InstanceIds=[inst.instance_id])["Reservations"][0]["Instances"][0]
        spot = None
        if raw.get("SpotInstanceRequestId"):
            [request] = ec2.describe_spot_instance_requests(SpotInstanceRequestIds=[raw["SpotInstanceRequestId"]])["SpotInstanceRequests"]
            spot = {"request_id": request["SpotInstanceRequestId"], "type": request["Type"], "state": request["State"]}
        instances.append(
            {
                "name": name,
                "id": inst.instance_id,
                "state": raw["State"]["Name"],
                "tags": {t["Key"]: t["Value"] for t in raw.get("Tags", [])},
                "trainer_exit_code": inst.trainer.poll() if inst.trainer else None,
                "launch_time": raw["LaunchTime"].strftime("%Y-%m-%dT%H:%M:%SZ"),
                "boots": inst.boots,
                "spot": spot,
            }
        )
    executions = []
    for e in sorted(cp.executions(), key=lambda e: e["startDate"]):
        d = sfn.describe_execution(executionArn=e["executionArn"])
        outcome, output = outcome_of(d)
        executions.append(
            {
                "name": e["name"],
                "status": d["status"],
                "outcome": outcome,
                "states": [s["name"] for s in execution_states(sfn, e["executionArn"])],
                "error": d.get("error"),
                "cause": d.get("cause"),
                "output": output,
                "input": json.loads(d["input"]),
            }
        )
    objects = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=cp.deployment.bucket):
        for obj in page.get("Contents", []):
            head = s3.head_object(Bucket=cp.deployment.bucket, Key=obj["Key"], ChecksumMode="ENABLED")
            algo = next((a for a in ("SHA256", "CRC64NVME", "CRC32C", "CRC32", "SHA1") if head.get(f"Checksum{a}")), None)
            objects.append(
                {
                    "uri": f"s3://{cp.deployment.bucket}/{obj['Key']}",
                    "size": obj["Size"],
                    "checksum": f"{algo}:{head[f'Checksum{algo}']}" if algo else None,
                }
            )
    return {
        "scenario": scenario,
        "instances": instances,
        "executions": executions,
        "objects": objects,
        "notifications": cp.notifications(),
        "steps": steps or [],
        "ssm_commands": [{"document": c["document"], "instance_ids": c["instance_ids"]} for c in cp.fleet.sent],
        "function_errors": list(cp.aws.lambdas.errors),
        "run_records": run_records(cp),
        "ec2_events": [
            {"time": e["time"], "detail-type": e["detail-type"], "instance-id": e["detail"]["instance-id"], "state": e["detail"]["state"]}
            for e in cp.aws.ec2_events
        ],
    }


def poll_loops(definition: dict[str, Any]) -> dict[str, int]:
    """State name to loop number for every state on a cycle of the state machine's top-level graph (the poll loops:
    Wait → Task → Count → Choice → back to the Wait). States on no cycle are left out."""
    states = definition.get("States", {})

    def targets(state: dict[str, Any]) -> list[str]:
        out = [state.get("Next"), state.get("Default")]
        out += [c.get("Next") for c in state.get("Choices", [])] + [c.get("Next") for c in state.get("Catch", [])]
        return [t for t in out if t in states]

    graph = {name: targets(state) for name, state in states.items()}
    # Tarjan's strongly connected components, iteratively (state machines can be long chains).
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    loops: dict[str, int] = {}
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            if i < len(graph[node]):
                work.append((node, i + 1))
                nxt = graph[node][i]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    number = len(set(loops.values())) + 1
                    loops.update(dict.fromkeys(component, number))
    return loops


POLLING = {
    "getCommandInvocation": "polling the command invocation",
    "describeInstances": "polling the instance state",
    "describeInstanceInformation": "waiting for the SSM agent",
}


def state_lines(states: list[dict[str, str]], definition: dict[str, Any] | None = None) -> list[str]:
    """The states an execution entered as numbered lines; each pass through a poll loop (consecutive states on the
    same cycle) becomes one line: ``   5-12  Wait for SSM agent → Describe SSM agent  ×2 (...)`` (the resume path's agent wait)."""
    defined = (definition or {}).get("States", {})
    loops = poll_loops(definition) if definition else {}
    lines: list[str] = []
    i = 0
    while i < len(states):
        loop = loops.get(states[i]["name"])
        j = i + 1
        while loop is not None and j < len(states) and loops.get(states[j]["name"]) == loop:
            j += 1
        if j - i == 1:
            lines.append(f"  {i + 1:>5}  {states[i]['name']:<32} {states[i]['type']}")
        else:
            run = states[i:j]
            first = run[0]["name"]
            rounds = sum(1 for s in run if s["name"] == first)
            names = list(dict.fromkeys(s["name"] for s in run if s["type"] not in ("Pass", "Choice"))) or [first]
            resources = [str(defined.get(n, {}).get("Resource", "")) for n in names]
            action = next((a for r in resources for a in [r.rsplit(":", 1)[-1]] if r), "")
            why = POLLING.get(action, f"polling {action}" if action else "a loop")
            lines.append(f"  {f'{i + 1}-{j}':>5}  {' → '.join(names)}  ×{rounds} ({why})")
        i = j
    return lines

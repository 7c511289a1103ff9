"""ROS 2 node: offline QT-Opt fine-tuning behind the ``trainer/fine_tune`` service.

A request is validated at once, field by field (``jobs.plan_job``: numbers finite and in range,
dataset paths non-blank and holding episodes, checked without decoding them; the start
checkpoint loads) and answered with a job id or a refusal naming the field, also while another
job runs; nothing a request holds can raise out of the service. In mode ``finetune`` (the
default) a job needs a start checkpoint; training from random weights is mode ``scratch``.
The job trains in a worker process; a reader thread forwards its progress and metrics to
``trainer/status`` and, when the job succeeds, announces the checkpoint on
``trainer/checkpoints`` (latched), which the policy swaps in. ``trainer/cancel``
(std_srvs/Trigger) stops the running job: the worker saves its state and exits (or is
terminated after ``cancel_timeout``) and the status says STATE_CANCELLED. A damaged bag or
episode in a job's data is skipped with a warning in this node's log (file, episode, reason)
and the job trains on the rest; with ``strict_datasets`` the job is refused or fails instead.
The parameters are ``node_settings.SETTINGS`` (read once at start-up); a request that leaves
steps and target_fraction 0 runs the fine-tuning recipe (``recipe.FineTuneRecipe``).
"""

from __future__ import annotations

import math
import threading
import traceback
import uuid

from rclpy.node import Node

from nsl_common import names
from nsl_common.node_main import run_node
from nsl_common.parameters import declare_settings
from nsl_common.paths import writable_dir
from nsl_common.qos import ANNOUNCE_QOS, LATCHED_QOS
from nsl_msgs.msg import CheckpointInfo, TrainerStatus
from nsl_msgs.srv import FineTune
from nsl_trainer.jobs import FineTuneJob, RequestRefused, describe, plan_job, start_job
from nsl_trainer.node_settings import SETTINGS, trainer_settings
from std_srvs.srv import Trigger


class TrainerNode(Node):
    def __init__(self) -> None:
        super().__init__(names.TRAINER_NODE)
        values = declare_settings(self, SETTINGS)
        self.checkpoint_dir = writable_dir(values["checkpoint_dir"], "checkpoint_dir")
        self.settings = trainer_settings(values, str(self.checkpoint_dir))
        self.settings.check_default_checkpoint()
        self.cancel_timeout = float(values["cancel_timeout"])

        self._lock = threading.Lock()
        self._job: FineTuneJob | None = None
        self._proc = None
        self._cancel = None
        self._cancelling = False
        nan = math.nan
        self._status = TrainerStatus(
            state=TrainerStatus.STATE_IDLE,
            loss=nan,
            mean_q=nan,
            td_error=nan,
            target_fraction=nan,
            learning_rate=nan,
            steps_per_second=nan,
            message="idle",
        )
        self.status_pub = self.create_publisher(
            TrainerStatus, names.TRAINER_STATUS_TOPIC, LATCHED_QOS
        )
        self.announce_pub = self.create_publisher(
            CheckpointInfo, names.CHECKPOINT_ANNOUNCE_TOPIC, ANNOUNCE_QOS
        )
        self.create_service(FineTune, names.FINE_TUNE_SERVICE, self.on_fine_tune)
        self.create_service(Trigger, names.CANCEL_JOB_SERVICE, self.on_cancel)
        self.publish_status()
        start = self.settings.default_checkpoint or "none (requests must name one)"
        if self.settings.mode == "scratch":
            start = "random weights (mode scratch)"
        self.get_logger().info(
            f"trainer ready; checkpoints go to {self.checkpoint_dir}; default start: {start}"
        )

    def publish_status(self, **changes) -> None:
        with self._lock:
            for k, v in changes.items():
                setattr(self._status, k, v)
            self._status.header.stamp = self.get_clock().now().to_msg()
            msg = self._status
        self.status_pub.publish(msg)

    def refuse(self, response: FineTune.Response, problem: str) -> FineTune.Response:
        """Fill ``response`` with a refusal and log it (every refusal, busy included)."""
        response.accepted, response.message, response.job_id = False, problem, ""
        self.get_logger().warn(f"fine-tune request refused: {problem}")
        return response

    def on_fine_tune(
        self, request: FineTune.Request, response: FineTune.Response
    ) -> FineTune.Response:
        """Start the job ``request`` asks for, or refuse it naming the field or the busy job.

        Nothing raises out of this callback: an unexpected error refuses the request.
        """
        try:
            return self._fine_tune(request, response)
        except Exception as exc:  # noqa: BLE001 - a request must never kill the node
            self.get_logger().error(f"fine-tune request failed: {traceback.format_exc()}")
            return self.refuse(response, f"internal error: {type(exc).__name__}: {exc}")

    def _fine_tune(
        self, request: FineTune.Request, response: FineTune.Response
    ) -> FineTune.Response:
        with self._lock:
            busy = self._job
        if busy is not None:
            return self.refuse(
                response, f"busy: job {busy.job_id} is running; try again when it ends"
            )
        job_id = uuid.uuid4().hex[:12]
        try:
            job = plan_job(request, self.settings, job_id)
        except RequestRefused as exc:
            return self.refuse(response, str(exc))
        with self._lock:
            running = self._job
            if running is None:
                self._job = job
                self._cancelling = False
                self._proc, conn, self._cancel = start_job(job)
                proc = self._proc
        if running is not None:  # a concurrent request won the race
            return self.refuse(response, f"busy: job {running.job_id} is running")
        threading.Thread(
            target=self.follow_job, args=(job, proc, conn), daemon=True, name=f"job-{job_id}"
        ).start()
        nan = math.nan
        self.publish_status(
            job_id=job_id,
            state=TrainerStatus.STATE_RUNNING,
            step=0,
            total_steps=job.steps,
            loss=nan,
            mean_q=nan,
            td_error=nan,
            target_fraction=nan,
            steps_per_second=nan,
            learning_rate=job.learning_rate,
            run_dir=job.run_dir,
            checkpoint_path="",
            message="starting",
        )
        self.get_logger().info(f"job {job_id}: {describe(job)}")
        response.accepted, response.message, response.job_id = (
            True,
            f"job {job_id} started",
            job_id,
        )
        return response

    def on_cancel(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self._lock:
            job, proc, cancel = self._job, self._proc, self._cancel
            if job is not None:
                self._cancelling = True
        if job is None:
            response.success, response.message = False, "no job is running"
            return response
        cancel.set()  # the worker saves its state and stops before its next step

        def enforce() -> None:
            proc.join(self.cancel_timeout)
            if proc.is_alive():
                self.get_logger().warn(
                    f"job {job.job_id}: worker did not stop within {self.cancel_timeout} s; "
                    "terminating it"
                )
                proc.terminate()

        threading.Thread(target=enforce, daemon=True, name=f"cancel-{job.job_id}").start()
        self.get_logger().info(f"job {job.job_id}: cancel requested")
        response.success, response.message = True, f"cancelling job {job.job_id}"
        return response

    def follow_job(self, job: FineTuneJob, proc, conn) -> None:
        """Forward a worker's messages until it ends (blocking reads here, not in a callback)."""
        final = None
        while True:
            try:
                event = conn.recv()
            except (EOFError, OSError):
                break
            if event["event"] == "progress":
                m = event.get("metrics", {})
                self.publish_status(
                    job_id=job.job_id,
                    state=TrainerStatus.STATE_RUNNING,
                    step=event["step"],
                    loss=event["loss"],
                    mean_q=m.get("mean_q", math.nan),
                    td_error=m.get("td_error", math.nan),
                    target_fraction=m.get("target_fraction", math.nan),
                    steps_per_second=m.get("steps_per_s", math.nan),
                    message=f"step {event['step']}/{event['total_steps']}",
                )
            elif event["event"] == "warning":
                self.get_logger().warn(f"job {job.job_id}: {event['message']}")
            else:
                final = event
        proc.join()
        with self._lock:
            cancelling = self._cancelling
        if final is None and cancelling:
            final = {
                "event": "cancelled",
                "message": f"worker terminated (exit code {proc.exitcode})",
            }
        if final is None:
            final = {
                "event": "failed",
                "message": f"worker process exited with code {proc.exitcode} without a result",
            }
        with (
            self._lock
        ):  # free before the final status, so a client seeing it can start the next job
            self._job, self._proc, self._cancel, self._cancelling = None, None, None, False
        if final["event"] == "cancelled":
            self.publish_status(
                job_id=job.job_id,
                state=TrainerStatus.STATE_CANCELLED,
                message=f"cancelled: {final['message']}",
            )
            self.get_logger().info(f"job {job.job_id} cancelled: {final['message']}")
        elif final["event"] == "succeeded":
            info = CheckpointInfo(
                checkpoint_id=final["checkpoint_id"],
                path=final["checkpoint_path"],
                parent_id=final.get("parent_id", ""),
                job_id=job.job_id,
            )
            info.header.stamp = self.get_clock().now().to_msg()
            self.publish_status(
                job_id=job.job_id,
                state=TrainerStatus.STATE_SUCCEEDED,
                step=job.steps,
                checkpoint_path=final["checkpoint_path"],
                message=f"wrote {final['checkpoint_path']}",
            )
            self.announce_pub.publish(info)
            skipped = final.get("data_warnings", 0)
            rest = f" (trained on the rest after {skipped} dataset warning(s))" if skipped else ""
            self.get_logger().info(
                f"job {job.job_id} succeeded: checkpoint {final['checkpoint_id']} announced{rest}"
            )
        else:
            self.publish_status(
                job_id=job.job_id, state=TrainerStatus.STATE_FAILED, message=final["message"]
            )
            self.get_logger().error(f"job {job.job_id} failed: {final['message']}")


def main(args=None) -> None:
    run_node(TrainerNode, "trainer_node", args, threads=2)


if __name__ == "__main__":
    main()

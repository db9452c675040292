"""The README's quick start: enqueue a typed job, run a worker, wait for its result."""

from dataclasses import dataclass

import durable_jobs as jobs

queue = jobs.Queue()  # $SDJ_DATABASE_URL, else sqlite:///jobs.db: where `sdj` looks too


@dataclass
class Email:
    to: str
    subject: str


@queue.job(retries=2)
def send_email(email: Email) -> str:
    print(f"sending {email.subject!r} to {email.to}")
    return "sent"


job_id = queue.enqueue(send_email, Email("u@example.com", "Hello"))
with queue.worker():  # works in background threads until the block ends
    # Waits for the outcome: the return value, or jobs.JobFailed once retries are spent.
    print(queue.result(job_id, timeout=30))

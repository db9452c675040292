"""The README's quick start: enqueue a typed job and run a worker until it completes."""

import time
from dataclasses import dataclass

import durable_jobs as jobs

queue = jobs.Queue("sqlite:///quickstart.db")


@dataclass
class Email:
    to: str
    subject: str


@queue.job(retries=5)
def send_email(email: Email) -> str:
    print(f"sending {email.subject!r} to {email.to}")
    return "sent"


job_id = queue.enqueue(send_email, Email("u@example.com", "Hello"))
with queue.worker():  # works in background threads until the block ends
    while queue.get_job(job_id).status != jobs.JobStatus.COMPLETED:
        time.sleep(0.01)
print(queue.get_job(job_id).result)  # b'"sent"'

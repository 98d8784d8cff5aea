"""A model source for the inference server: every succeeded job's fine-tuned model, servable at once."""
from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from ..serve.registry import ServedModel
from .db import SUCCEEDED, Database, JobRow


class JobsModelSource:
    """``models()`` lists succeeded jobs as ``ServedModel(id=fine_tuned_model, run_dir=the job's run)``."""

    def __init__(self, db: Database | str):
        self.db = Database(db) if isinstance(db, str) else db

    def models(self) -> list[ServedModel]:
        with self.db.session() as s:
            rows = s.execute(select(JobRow.fine_tuned_model, JobRow.run_dir, JobRow.finished_at,
                                    JobRow.organization_id)
                             .where(JobRow.status == SUCCEEDED, JobRow.fine_tuned_model.is_not(None),
                                    JobRow.run_dir.is_not(None)).order_by(JobRow.seq)).all()
        return [ServedModel(id=name, run_dir=Path(run_dir), created=finished or 0, owned_by=org)
                for name, run_dir, finished, org in rows if Path(run_dir).is_dir()]

"""Imported by the chaos suite's fork server, once: its workers start warm (chaos_worker)."""

import chaos_worker

chaos_worker.warm()

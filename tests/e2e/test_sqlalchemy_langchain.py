"""SQLAlchemy 2 (psycopg 3 driver) and LangChain's SQLDatabase through the gateway: the agent's
code changes only host, port and credential."""

from __future__ import annotations

import uuid
import warnings

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column


@pytest.fixture
def engine(gw, alice):
    user, token = alice
    eng = sa.create_engine(gw.url(user, token), pool_pre_ping=True)
    yield eng
    eng.dispose()


def test_core_select(engine):
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT 1 + :x"), {"x": 41}).scalar_one() == 42
        rows = c.execute(sa.text("SELECT id, name FROM items WHERE id <= :n ORDER BY id"), {"n": 3}).all()
        assert [tuple(r) for r in rows] == [(1, "item-1"), (2, "item-2"), (3, "item-3")]


def test_orm_reads_and_writes(engine):
    suffix = uuid.uuid4().hex[:8]

    class Base(DeclarativeBase):
        pass

    class Note(Base):
        __tablename__ = f"sa_notes_{suffix}"
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str]
        score: Mapped[float] = mapped_column(default=0.0)

    Base.metadata.create_all(engine)
    with Session(engine) as s:
        s.add_all([Note(title=f"note {i}", score=i / 2) for i in range(50)])
        s.commit()
    with Session(engine) as s:
        n = s.scalars(sa.select(Note).where(Note.title == "note 7")).one()
        assert n.score == 3.5
        n.score = 99.0
        s.commit()
    with Session(engine) as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Note)) == 50
        assert s.scalars(sa.select(Note.score).where(Note.title == "note 7")).one() == 99.0
        s.execute(sa.delete(Note).where(Note.score < 10))
        s.rollback()  # rolled back: nothing deleted
        assert s.scalar(sa.select(sa.func.count()).select_from(Note)) == 50
    # reflection (catalog queries) works too
    insp = sa.inspect(engine)
    assert Note.__tablename__ in insp.get_table_names()
    assert {c["name"] for c in insp.get_columns(Note.__tablename__)} == {"id", "title", "score"}
    Base.metadata.drop_all(engine)


def test_pool_reuses_connections(engine):
    pids = set()
    for _ in range(5):
        with engine.connect() as c:
            pids.add(c.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())
    assert len(pids) == 1  # pooled connection kept working through the gateway


def test_langchain_sqldatabase(gw, alice):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from langchain_community.utilities import SQLDatabase

    user, token = alice
    db = SQLDatabase.from_uri(gw.url(user, token), include_tables=["items"], sample_rows_in_table_info=2)
    assert db.dialect == "postgresql"
    assert "items" in db.get_usable_table_names()
    out = db.run("SELECT id, name FROM items ORDER BY id LIMIT 2")
    assert "item-1" in out and "item-2" in out and "item-3" not in out
    info = db.get_table_info()
    assert "CREATE TABLE items" in info
    assert "price" in info
    assert "item-1" in info  # sample rows were fetched through the gateway
    # Errors come back as strings with run_no_throw, and the session stays usable.
    err = db.run_no_throw("SELECT * FROM definitely_missing_table")
    assert "definitely_missing_table" in err
    assert "1000" in db.run("SELECT count(*) FROM items")

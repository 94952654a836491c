// Drop-in compatibility with libSQL clients and ORMs, against the real Worker in workerd:
// the data-safety regressions over raw Hrana, connection state that must not leak between
// requests, SQLite error codes, big batches, changes() semantics, and the flows of Drizzle
// (drizzle-kit push), Kysely and Prisma (@prisma/adapter-libsql, generated offline).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { mkdirSync, writeFileSync, readFileSync, rmSync } from "node:fs";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { createClient } from "@libsql/client";
import { drizzle } from "drizzle-orm/libsql";
import { Kysely, Migrator, sql as ksql } from "kysely";
import { LibsqlDialect } from "@libsql/kysely-libsql";
import { startEngine, post, tempDir, removeDir } from "./harness.mjs";
import { withSqliteCodes } from "../dist/libsql.js";

const run = promisify(execFile);
const here = path.dirname(fileURLToPath(import.meta.url));
const tsRoot = path.resolve(here, "..");
let engine;

before(async () => {
  engine = await startEngine();
});
after(async () => engine?.stop());

const client = (db, opts = {}) => createClient({ url: `${engine.url}/v1/db/${db}/`, intMode: "number", ...opts });
const pipeline = (db, body) => post(`${engine.url}/v1/db/${db}/v2/pipeline`, body);
const exec = (sql) => ({ type: "execute", stmt: { sql } });

test("regression: a batch with the client's own ROLLBACK commits nothing (raw Hrana v2)", async () => {
  await pipeline("c-rollback", { requests: [exec("CREATE TABLE t (x INTEGER PRIMARY KEY)")] });
  // As a v2 client sends a batch: each step conditioned only on the one before.
  const steps = [
    { stmt: { sql: "BEGIN" } },
    { stmt: { sql: "INSERT INTO t VALUES (1)" }, condition: { type: "ok", step: 0 } },
    { stmt: { sql: "ROLLBACK" }, condition: { type: "ok", step: 1 } },
    { stmt: { sql: "INSERT INTO t VALUES (2)" }, condition: { type: "ok", step: 2 } },
    { stmt: { sql: "COMMIT" }, condition: { type: "ok", step: 3 } },
    { stmt: { sql: "ROLLBACK" }, condition: { type: "not", cond: { type: "ok", step: 4 } } },
  ];
  const r = await pipeline("c-rollback", { requests: [{ type: "batch", batch: { steps } }, { type: "close" }] });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  const result = r.body.results[0].response.result;
  assert.ok(result.step_errors[4], "the batch's COMMIT failed");
  assert.ok(result.step_errors[3], "the INSERT after the ROLLBACK is reported undone");
  const count = await pipeline("c-rollback", { requests: [exec("SELECT count(*) FROM t")] });
  assert.equal(count.body.results[0].response.result.rows[0][0].value, "0", "nothing of the failed batch is there");
});

test("regression: after an abandoned transaction the baton refuses statements until ROLLBACK", async () => {
  const keyless = await startEngine({ extra: { bindings: { TWILL_BATON_KEY: "" } } });
  try {
    const p = (body) => post(`${keyless.url}/v1/db/c-abandon/v2/pipeline`, body);
    await p({ requests: [exec("CREATE TABLE t (x)")] });
    const first = await p({ requests: [exec("BEGIN"), exec("INSERT INTO t VALUES (1)")] });
    assert.equal(first.body.results[0].error.code, "TRANSACTION_NOT_SUPPORTED");
    const baton = first.body.baton;
    // The client believes it is inside its transaction: these must never run in autocommit.
    const next = await p({ baton, requests: [exec("INSERT INTO t VALUES (2)"), exec("COMMIT")] });
    assert.equal(next.body.results[0].error.code, "TRANSACTION_NOT_SUPPORTED");
    assert.equal(next.body.results[1].error.code, "TRANSACTION_NOT_SUPPORTED");
    const after = await p({ requests: [exec("SELECT count(*) FROM t")] });
    assert.equal(after.body.results[0].response.result.rows[0][0].value, "0");
    // Once the client ends it (the COMMIT above did), the stream works again.
    const again = await p({ baton: next.body.baton, requests: [exec("INSERT INTO t VALUES (3)"), { type: "close" }] });
    assert.equal(again.body.results[0].type, "ok", JSON.stringify(again.body));
  } finally {
    await keyless.stop();
  }
});

test("connection state never leaks: foreign keys are enforced on every request, whatever ran before", async () => {
  const q = (sql) => post(`${engine.url}/v1/db/c-fk/query`, { sql });
  await q("CREATE TABLE parent (id INTEGER PRIMARY KEY)");
  await q("CREATE TABLE child (id INTEGER PRIMARY KEY, parent INTEGER REFERENCES parent(id) ON DELETE CASCADE)");
  // A request turns enforcement off for itself (as a migration might at its end)...
  const off = await pipeline("c-fk", { requests: [exec("PRAGMA foreign_keys = OFF"), exec("INSERT INTO child VALUES (1, 99)")] });
  assert.equal(off.body.results[1].type, "ok", JSON.stringify(off.body));
  // ...and the next requests on the same isolate are enforced again.
  const violating = await q("INSERT INTO child VALUES (2, 98)");
  assert.equal(violating.status, 400);
  assert.equal(violating.body.error.sqlite_code, "SQLITE_CONSTRAINT_FOREIGNKEY");
  const on = await q("PRAGMA foreign_keys");
  assert.deepEqual(on.body.rows, [[1]]);
});

test("@libsql/client: SQLite error codes, a 4,000-statement batch, executeMultiple's real error, changes()", async () => {
  const c = client("c-client");
  await c.batch(["CREATE TABLE u (id INTEGER PRIMARY KEY, email TEXT UNIQUE NOT NULL)", "CREATE TABLE w (x)"]);
  await c.execute({ sql: "INSERT INTO u VALUES (1, ?)", args: ["a@x"] });
  await assert.rejects(c.execute({ sql: "INSERT INTO u VALUES (2, ?)", args: ["a@x"] }), (e) => {
    assert.equal(e.code, "SQLITE_CONSTRAINT_UNIQUE");
    assert.equal(e.message, "SQLITE_CONSTRAINT_UNIQUE: UNIQUE constraint failed: u.email", "SQLite's message, no extra prefix");
    return true;
  });
  const coded = withSqliteCodes(c);
  await assert.rejects(coded.execute("INSERT INTO u VALUES (1, 'b@x')"), (e) => {
    assert.equal(e.rawCode, 1555, "a duplicate primary key is SQLITE_CONSTRAINT_PRIMARYKEY");
    assert.equal(e.extendedCode, "SQLITE_CONSTRAINT_PRIMARYKEY");
    return true;
  });
  await assert.rejects(coded.execute("INSERT INTO u (id) VALUES (3)"), (e) => e.rawCode === 1299);
  await assert.rejects(c.execute("SELEC 1"), (e) => e.code === "SQLITE_ERROR");
  // What turso has only as experimental is refused by name, not with advice to pass a flag.
  await assert.rejects(c.execute("CREATE TABLE kv (k TEXT PRIMARY KEY, v) WITHOUT ROWID"), (e) => {
    assert.equal(e.code, "STATEMENT_NOT_ALLOWED");
    assert.match(e.message, /WITHOUT ROWID tables cannot be created: use a rowid table/);
    assert.doesNotMatch(e.message, /--experimental/);
    return true;
  });
  // What applications run when they open a SQLite file: accepted, answered with the value in force.
  await c.executeMultiple("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;");
  assert.equal((await c.execute("PRAGMA journal_mode = DELETE")).rows[0].journal_mode, "wal");
  assert.equal((await c.execute("PRAGMA page_size")).rows[0].page_size, 4096);
  await assert.rejects(c.execute("PRAGMA page_size = 8192"), (e) => e.code === "STATEMENT_NOT_ALLOWED" && /cannot be set/.test(e.message));

  const many = Array.from({ length: 4000 }, (_, i) => ({ sql: "INSERT INTO w VALUES (?)", args: [i] }));
  const results = await c.batch(many, "write");
  assert.equal(results.length, 4000);
  assert.equal((await c.execute("SELECT count(*) AS n FROM w")).rows[0].n, 4000);

  await assert.rejects(c.executeMultiple("INSERT INTO w VALUES (1); INSERT INTO nope VALUES (2);"), (e) => {
    assert.match(e.message, /no such table: nope/);
    return true;
  });

  const window = await c.execute("SELECT x, count(*) OVER () FROM w LIMIT 3");
  assert.equal(window.rowsAffected, 0, "a SELECT changes nothing, window functions included");
  const ins = await c.execute("INSERT INTO w VALUES (-1)");
  assert.equal(ins.rowsAffected, 1);
  assert.equal(typeof ins.lastInsertRowid, "bigint");
  await c.execute("CREATE INDEX w_x ON w (x)");
  assert.equal((await c.execute("DROP INDEX w_x")).rowsAffected, 0);
  assert.equal((await c.execute("DROP TABLE w")).rowsAffected, 0);
  c.close();
});

test("Drizzle: drizzle-kit push twice (the second changes nothing), relational queries, batch", async () => {
  const dir = tempDir("twill-drizzle-push-");
  try {
    const config = path.join(dir, "drizzle.config.mjs");
    writeFileSync(
      config,
      `export default { dialect: "turso", schema: ${JSON.stringify(path.join(here, "fixtures/drizzle-push/schema.mjs"))}, ` +
        `dbCredentials: { url: ${JSON.stringify(`${engine.url}/v1/db/c-push/`)} } };\n`,
    );
    const push = () =>
      run(path.join(tsRoot, "node_modules/.bin/drizzle-kit"), ["push", "--config", config, "--force"], {
        cwd: tsRoot,
        timeout: 120_000,
        env: { ...process.env, NO_COLOR: "1" },
      });
    const first = await push();
    assert.match(first.stdout + first.stderr, /Changes applied/, first.stdout + first.stderr);
    const second = await push();
    assert.match(second.stdout + second.stderr, /No changes detected/, second.stdout + second.stderr);
  } finally {
    removeDir(dir);
  }
  const schema = await import(pathToFileURL(path.join(here, "fixtures/drizzle-push/schema.mjs")).href);
  const { relations } = await import("drizzle-orm");
  const authorRelations = relations(schema.Author, ({ many }) => ({ posts: many(schema.posts) }));
  const postRelations = relations(schema.posts, ({ one }) => ({
    author: one(schema.Author, { fields: [schema.posts.authorId], references: [schema.Author.id] }),
  }));
  const db = drizzle(client("c-push"), { schema: { ...schema, authorRelations, postRelations } });
  const [ada] = await db.insert(schema.Author).values({ name: "ada" }).returning();
  assert.equal(ada.karma, -1);
  assert.equal(ada.active, false);
  assert.match(ada.createdAt, /^20\d\d-/);
  await db.batch([
    db.insert(schema.posts).values({ authorId: ada.id, title: "one" }),
    db.insert(schema.posts).values({ authorId: ada.id, title: "two" }),
  ]);
  const withPosts = await db.query.Author.findMany({ with: { posts: true } });
  assert.deepEqual(withPosts[0].posts.map((p) => p.title).sort(), ["one", "two"]);
});

test("Kysely: migrations, CRUD, introspection without internal tables, ON DELETE CASCADE", async () => {
  const db = new Kysely({ dialect: new LibsqlDialect({ client: client("c-kysely") }) });
  const migrator = new Migrator({
    db,
    provider: {
      async getMigrations() {
        return {
          "001_init": {
            async up(db) {
              await db.schema
                .createTable("Person")
                .addColumn("id", "integer", (c) => c.primaryKey().autoIncrement())
                .addColumn("name", "text", (c) => c.notNull())
                .execute();
              await db.schema
                .createTable("pet")
                .addColumn("id", "integer", (c) => c.primaryKey())
                .addColumn("owner_id", "integer", (c) => c.notNull().references("Person.id").onDelete("cascade"))
                .addColumn("name", "text")
                .execute();
            },
          },
        };
      },
    },
  });
  const { error, results } = await migrator.migrateToLatest();
  assert.equal(error, undefined, String(error));
  assert.equal(results[0].status, "Success");
  const { id } = await db.insertInto("Person").values({ name: "ada" }).returning("id").executeTakeFirstOrThrow();
  await db.insertInto("pet").values([{ id: 1, owner_id: id, name: "rex" }, { id: 2, owner_id: id, name: "tom" }]).execute();
  await db.updateTable("Person").set({ name: "Ada" }).where("Person.id", "=", id).execute();
  assert.equal((await db.selectFrom("Person").select("name").executeTakeFirstOrThrow()).name, "Ada");
  const tables = (await db.introspection.getTables()).map((t) => t.name).sort();
  assert.deepEqual(tables, ["Person", "pet"], "no internal tables, names as written");
  await db.deleteFrom("Person").where("id", "=", id).execute();
  const left = await db.selectFrom("pet").select(ksql`count(*)`.as("n")).executeTakeFirstOrThrow();
  assert.equal(Number(left.n), 0, "ON DELETE CASCADE is enforced");
  await assert.rejects(db.insertInto("pet").values({ id: 3, owner_id: 777 }).execute(), /FOREIGN KEY/);
  await db.destroy();
});

test("Prisma 7 (@prisma/adapter-libsql, query compiler, generated offline): PascalCase CRUD, P2002, P2003, transactions", async () => {
  const fixture = path.join(here, "fixtures/prisma");
  const generated = path.join(fixture, "generated");
  rmSync(generated, { recursive: true, force: true });
  // `prisma generate` needs no engine binary, but checks that one is there: any executable
  // will do, and nothing is downloaded.
  await run(path.join(tsRoot, "node_modules/.bin/prisma"), ["generate", "--schema", path.join(fixture, "schema.prisma")], {
    cwd: tsRoot,
    timeout: 180_000,
    env: { ...process.env, PRISMA_SCHEMA_ENGINE_BINARY: process.execPath, PRISMA_HIDE_UPDATE_MESSAGE: "1" },
  });
  const bundle = path.join(generated, "bundle.mjs");
  await run(
    path.join(tsRoot, "node_modules/.bin/esbuild"),
    [path.join(generated, "client.ts"), "--bundle", "--platform=node", "--format=esm", "--packages=external", `--outfile=${bundle}`, "--log-level=warning"],
    { cwd: tsRoot, timeout: 120_000 },
  );
  const { PrismaClient, Prisma } = await import(pathToFileURL(bundle).href);
  const { PrismaLibSql } = await import("@prisma/adapter-libsql");
  class PrismaTwill extends PrismaLibSql {
    createClient(config) {
      return withSqliteCodes(super.createClient(config));
    }
  }
  const url = `${engine.url}/v1/db/c-prisma/`;
  const setup = client("c-prisma");
  await setup.executeMultiple(readFileSync(path.join(fixture, "schema.sql"), "utf8"));
  const prisma = new PrismaClient({ adapter: new PrismaTwill({ url }) });
  try {
    // A nested create runs as an interactive transaction.
    const ada = await prisma.user.create({ data: { email: "ada@x", name: "Ada", posts: { create: [{ title: "one" }] } }, include: { posts: true } });
    assert.equal(ada.posts.length, 1);
    await prisma.user.update({ where: { id: ada.id }, data: { name: "Ada L." } });
    await prisma.post.update({ where: { id: ada.posts[0].id }, data: { title: "first" } });
    assert.equal((await prisma.post.findFirst({ where: { authorId: ada.id } })).title, "first");
    await assert.rejects(prisma.user.create({ data: { email: "ada@x" } }), (e) => {
      assert.ok(e instanceof Prisma.PrismaClientKnownRequestError, String(e));
      assert.equal(e.code, "P2002");
      return true;
    });
    await assert.rejects(prisma.post.create({ data: { title: "orphan", authorId: 424242 } }), (e) => {
      assert.equal(e.code, "P2003", String(e));
      return true;
    });
    const [bob, count] = await prisma.$transaction([prisma.user.create({ data: { email: "bob@x" } }), prisma.user.count()]);
    assert.equal(count, 2);
    await prisma.$transaction(async (tx) => {
      await tx.post.create({ data: { title: "by bob", authorId: bob.id } });
      await tx.user.update({ where: { id: bob.id }, data: { name: "Bob" } });
    });
    await assert.rejects(
      prisma.$transaction(async (tx) => {
        await tx.user.update({ where: { id: bob.id }, data: { name: "nobody" } });
        throw new Error("roll it back");
      }),
      /roll it back/,
    );
    assert.equal((await prisma.user.findUnique({ where: { id: bob.id } })).name, "Bob");
    await prisma.post.deleteMany({ where: { authorId: bob.id } });
    await prisma.user.delete({ where: { id: bob.id } });
    assert.equal(await prisma.user.count(), 1);
  } finally {
    await prisma.$disconnect();
    rmSync(generated, { recursive: true, force: true });
  }
});

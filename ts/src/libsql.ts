// For `@libsql/client` users: SQLite's numeric result codes on errors.
//
// TwillDB Edge names SQLite's (extended) result code in every Hrana error's `code`
// (`SQLITE_CONSTRAINT_UNIQUE`), but over HTTP the libSQL client has no numeric code, so
// `LibsqlError.rawCode` stays undefined (as it does against sqld). Tools that branch on
// the number, such as Prisma's driver adapter (P2002 for 1555/2067, P2003 for 787), need it:
//
//   import { withSqliteCodes } from "twilldb-edge/libsql";
//   const client = withSqliteCodes(createClient({ url, authToken }));
//
//   // Prisma 7:
//   class PrismaTwill extends PrismaLibSql {
//     createClient(config) { return withSqliteCodes(super.createClient(config)); }
//   }

/** SQLite's result codes by name, as the server sends them. */
export const SQLITE_CODES: Readonly<Record<string, number>> = {
  SQLITE_ERROR: 1,
  SQLITE_ABORT: 4,
  SQLITE_BUSY: 5,
  SQLITE_READONLY: 8,
  SQLITE_INTERRUPT: 9,
  SQLITE_CORRUPT: 11,
  SQLITE_FULL: 13,
  SQLITE_TOOBIG: 18,
  SQLITE_CONSTRAINT: 19,
  SQLITE_MISMATCH: 20,
  SQLITE_RANGE: 25,
  SQLITE_NOTADB: 26,
  SQLITE_CONSTRAINT_CHECK: 275,
  SQLITE_CONSTRAINT_FOREIGNKEY: 787,
  SQLITE_CONSTRAINT_NOTNULL: 1299,
  SQLITE_CONSTRAINT_PRIMARYKEY: 1555,
  SQLITE_CONSTRAINT_TRIGGER: 1811,
  SQLITE_CONSTRAINT_UNIQUE: 2067,
  // An interactive transaction whose reads changed: retry it (SQLite's BUSY class).
  TRANSACTION_CONFLICT: 5,
  WRITE_CONFLICT: 5,
};

/** Sets a libSQL error's `rawCode` (and `extendedCode`) from the code name it carries. */
export function addSqliteCodes<E>(e: E): E {
  if (e === null || typeof e !== "object") return e;
  const err = e as { code?: unknown; rawCode?: number; extendedCode?: string };
  if (typeof err.code === "string" && err.rawCode === undefined && err.code in SQLITE_CODES) {
    err.rawCode = SQLITE_CODES[err.code];
    if (err.extendedCode === undefined && err.code.startsWith("SQLITE_")) err.extendedCode = err.code;
  }
  return e;
}

type AnyFn = (...args: unknown[]) => unknown;

function wrapMethods<T extends object>(target: T, names: string[], wrapResult?: (v: unknown) => unknown): T {
  return new Proxy(target, {
    get(obj, prop) {
      // The client keeps #private state: getters and methods must see the real object.
      const value = Reflect.get(obj, prop, obj);
      if (typeof value !== "function") return value;
      if (typeof prop !== "string" || !names.includes(prop)) return (value as AnyFn).bind(obj);
      return (...args: unknown[]) => {
        let out: unknown;
        try {
          out = (value as AnyFn).apply(obj, args);
        } catch (e) {
          throw addSqliteCodes(e);
        }
        if (out instanceof Promise) {
          return out.then(wrapResult ?? ((v) => v), (e) => {
            throw addSqliteCodes(e);
          });
        }
        return out;
      };
    },
  });
}

/** A libSQL client (or transaction) whose errors carry `rawCode` and `extendedCode`. */
export function withSqliteCodes<C extends object>(client: C): C {
  const statementMethods = ["execute", "batch", "executeMultiple", "migrate", "commit", "rollback"];
  return wrapMethods(client, [...statementMethods, "transaction"], (v) =>
    v && typeof v === "object" && "commit" in (v as object) ? wrapMethods(v as object, statementMethods) : v,
  );
}

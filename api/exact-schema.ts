/**
 * A response schema that must give exactly a store or domain type. Fastify's serializer drops every field a response
 * schema does not name, so a field added to the type and not to the schema would silently never reach a client
 * (GET /v1/hosts lost the storage pools that way); wrapped in `exactly<T>()`, it fails the build instead.
 */
import type { z } from 'zod';

/** Every field required, all the way down: a field only one side has, optional or not, then breaks assignability. */
type DeepRequired<T> = T extends readonly (infer U)[]
  ? DeepRequired<U>[]
  : T extends object
    ? { [K in keyof T]-?: DeepRequired<T[K]> }
    : T;
type Mutual<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
type Same<A, B> = Mutual<A, B> extends true ? Mutual<DeepRequired<A>, DeepRequired<B>> : false;

/** The schema, if its output is exactly T; otherwise the call does not type-check (the extra argument is `never`). */
export function exactly<T>() {
  return <S extends z.ZodType>(schema: S, ..._same: Same<z.output<S>, T> extends true ? [] : [never]): S => schema;
}

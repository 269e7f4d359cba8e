-- Supabase Realtime: where the database has the `supabase_realtime` publication (every Supabase
-- project does), runs and their outputs are published on it, so the platform's UI can follow a
-- run live through Realtime (`postgres_changes` on public.app_runs / public.app_outputs), under
-- the same RLS as a query. Where the publication is absent (plain PostgreSQL) nothing happens;
-- a publication created later needs `alter publication supabase_realtime add table …` by hand
-- (README, Database).
do $$
declare
  relation text;
begin
  if not exists (select 1 from pg_publication where pubname = 'supabase_realtime') then
    return;
  end if;
  foreach relation in array array['app_runs', 'app_outputs'] loop
    if not exists (
      select 1 from pg_publication_tables
       where pubname = 'supabase_realtime' and schemaname = 'public' and tablename = relation
    ) then
      execute format('alter publication supabase_realtime add table public.%I', relation);
    end if;
  end loop;
end
$$;

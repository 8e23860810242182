-- The reference directory of companies and people that the BD stages read.

CREATE TABLE directory_companies (
    domain          text PRIMARY KEY,
    name            text NOT NULL,
    employee_count  integer,
    industry        text,
    country         text,
    linkedin_url    text,
    keywords        text[] NOT NULL DEFAULT '{}',
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE directory_people (
    -- lower(company_domain) || '/' || lower(first_name) || '/' || lower(last_name): the natural
    -- key that makes re-importing a file an upsert, not a duplicate.
    person_key      text PRIMARY KEY,
    company_domain  text NOT NULL,
    first_name      text NOT NULL,
    last_name       text NOT NULL,
    title           text,
    seniority       text,
    email           text,
    linkedin_url    text,
    headline        text,
    location        text,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX directory_people_domain ON directory_people (company_domain);

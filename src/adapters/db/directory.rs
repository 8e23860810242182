//! The reference directory in Postgres: lookups for the pipeline, upserts for `directory import`.

use super::DbError;
use crate::domain::stages::{DirectoryCompany, DirectoryPerson};
use deadpool_postgres::{GenericClient, Pool};

pub async fn companies(pool: &Pool, domains: &[String]) -> Result<Vec<DirectoryCompany>, DbError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT domain, name, employee_count, industry, country, linkedin_url, keywords
             FROM directory_companies WHERE domain = ANY($1)",
            &[&domains],
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| DirectoryCompany {
            domain: r.get(0),
            name: r.get(1),
            employee_count: r.get::<_, Option<i32>>(2).map(|n| n.max(0) as u32),
            industry: r.get(3),
            country: r.get(4),
            linkedin_url: r.get(5),
            keywords: r.get(6),
        })
        .collect())
}

pub async fn people(pool: &Pool, domains: &[String]) -> Result<Vec<DirectoryPerson>, DbError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT company_domain, first_name, last_name, title, seniority, email, linkedin_url, headline, location
             FROM directory_people WHERE company_domain = ANY($1)
             ORDER BY company_domain, last_name, first_name",
            &[&domains],
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| DirectoryPerson {
            company_domain: r.get(0),
            first_name: r.get(1),
            last_name: r.get(2),
            title: r.get(3),
            seniority: r.get(4),
            email: r.get(5),
            linkedin_url: r.get(6),
            headline: r.get(7),
            location: r.get(8),
        })
        .collect())
}

pub fn person_key(p: &DirectoryPerson) -> String {
    format!(
        "{}/{}/{}",
        p.company_domain.to_lowercase(),
        p.first_name.trim().to_lowercase(),
        p.last_name.trim().to_lowercase()
    )
}

pub async fn upsert_company(tx: &impl GenericClient, c: &DirectoryCompany) -> Result<(), DbError> {
    tx.execute(
        "INSERT INTO directory_companies (domain, name, employee_count, industry, country, linkedin_url, keywords)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (domain) DO UPDATE SET name = EXCLUDED.name,
           employee_count = EXCLUDED.employee_count, industry = EXCLUDED.industry,
           country = EXCLUDED.country, linkedin_url = EXCLUDED.linkedin_url,
           keywords = EXCLUDED.keywords, updated_at = now()",
        &[
            &c.domain,
            &c.name,
            &c.employee_count.map(|n| n.min(i32::MAX as u32) as i32),
            &c.industry,
            &c.country,
            &c.linkedin_url,
            &c.keywords,
        ],
    )
    .await?;
    Ok(())
}

pub async fn upsert_person(tx: &impl GenericClient, p: &DirectoryPerson) -> Result<(), DbError> {
    tx.execute(
        "INSERT INTO directory_people (person_key, company_domain, first_name, last_name, title, seniority, email, linkedin_url, headline, location)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (person_key) DO UPDATE SET company_domain = EXCLUDED.company_domain,
           first_name = EXCLUDED.first_name, last_name = EXCLUDED.last_name, title = EXCLUDED.title,
           seniority = EXCLUDED.seniority, email = EXCLUDED.email,
           linkedin_url = EXCLUDED.linkedin_url, headline = EXCLUDED.headline,
           location = EXCLUDED.location, updated_at = now()",
        &[
            &person_key(p),
            &p.company_domain,
            &p.first_name,
            &p.last_name,
            &p.title,
            &p.seniority,
            &p.email,
            &p.linkedin_url,
            &p.headline,
            &p.location,
        ],
    )
    .await?;
    Ok(())
}

pub async fn counts(pool: &Pool) -> Result<(i64, i64), DbError> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM directory_companies), (SELECT count(*) FROM directory_people)",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

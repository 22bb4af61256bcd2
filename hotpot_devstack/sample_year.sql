-- A restaurant's year on top of sample.sql: about 20,000 guests, 380,000 orders and 1.3 million order
-- lines, so that backups, drills and their plots show realistic sizes and rates. Deterministic: every row
-- is a function of its number.

INSERT INTO sales.customers (name, email)
SELECT 'Regular ' || n, 'regular' || n || '@example.com' FROM generate_series(1, 20000) AS n;

INSERT INTO sales.orders (customer_id, table_number, status, placed_at)
SELECT
    CASE WHEN n % 3 = 0 THEN NULL ELSE 1 + (n::bigint * 7919) % 20025 END,
    1 + n % 18,
    (ARRAY['paid', 'paid', 'paid', 'paid', 'paid', 'served', 'cancelled']::sales.order_status[])[1 + n % 7],
    timestamptz '2025-01-01 11:00:00+00' + (n % 365) * interval '1 day'
        + ((n::bigint * 104729) % 43200) * interval '1 second'
FROM generate_series(1, 380000) AS n;

-- Each order takes three or four of the twelve dishes, chosen by its id.
INSERT INTO sales.order_items (order_id, menu_item_id, quantity, unit_price_cents)
SELECT o.id, m.id, 1 + (o.id + m.id) % 3, m.price_cents
FROM sales.orders o JOIN menu.menu_items m ON (o.id * 31 + m.id * 17) % 12 < 3 + o.id % 2
WHERE o.id > 120;

ANALYZE;

-- A small, deterministic slice of the restaurant API's database: enough shape (two schemas, an enum, a
-- sequence, foreign keys, a view, an index) for backups and restore drills to have something real to check.

CREATE SCHEMA menu;
CREATE SCHEMA sales;

CREATE TABLE menu.categories (
    id serial PRIMARY KEY,
    name text NOT NULL UNIQUE
);

CREATE TABLE menu.menu_items (
    id serial PRIMARY KEY,
    category_id integer NOT NULL REFERENCES menu.categories (id),
    name text NOT NULL UNIQUE,
    price_cents integer NOT NULL CHECK (price_cents > 0),
    spice_level smallint NOT NULL DEFAULT 0 CHECK (spice_level BETWEEN 0 AND 5),
    available boolean NOT NULL DEFAULT true
);

CREATE TABLE sales.customers (
    id serial PRIMARY KEY,
    name text NOT NULL,
    email text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT '2026-01-01 12:00:00+00'
);

CREATE TYPE sales.order_status AS ENUM ('placed', 'cooking', 'served', 'paid', 'cancelled');

-- Ticket numbers shown in the kitchen, separate from the primary key.
CREATE SEQUENCE sales.ticket_number_seq START 1000;

CREATE TABLE sales.orders (
    id serial PRIMARY KEY,
    ticket_number bigint NOT NULL DEFAULT nextval('sales.ticket_number_seq') UNIQUE,
    customer_id integer REFERENCES sales.customers (id),
    table_number smallint,
    status sales.order_status NOT NULL DEFAULT 'placed',
    placed_at timestamptz NOT NULL
);

CREATE INDEX orders_placed_at_idx ON sales.orders (placed_at);

CREATE TABLE sales.order_items (
    order_id integer NOT NULL REFERENCES sales.orders (id) ON DELETE CASCADE,
    menu_item_id integer NOT NULL REFERENCES menu.menu_items (id),
    quantity integer NOT NULL CHECK (quantity > 0),
    unit_price_cents integer NOT NULL,
    PRIMARY KEY (order_id, menu_item_id)
);

CREATE VIEW sales.daily_revenue AS
SELECT date_trunc('day', o.placed_at) AS day, sum(i.quantity * i.unit_price_cents) AS revenue_cents
FROM sales.orders o JOIN sales.order_items i ON i.order_id = o.id
WHERE o.status <> 'cancelled'
GROUP BY 1;

INSERT INTO menu.categories (name) VALUES ('broths'), ('meats'), ('vegetables'), ('noodles'), ('drinks');

INSERT INTO menu.menu_items (category_id, name, price_cents, spice_level) VALUES
    (1, 'Sichuan mala broth', 1200, 5),
    (1, 'Mushroom broth', 1000, 0),
    (1, 'Tomato broth', 1000, 1),
    (2, 'Sliced lamb', 1450, 0),
    (2, 'Wagyu beef', 2600, 0),
    (2, 'Pork belly', 1150, 0),
    (3, 'Napa cabbage', 450, 0),
    (3, 'Enoki mushrooms', 550, 0),
    (3, 'Tofu skin', 500, 0),
    (4, 'Hand-pulled noodles', 600, 0),
    (5, 'Chrysanthemum tea', 350, 0),
    (5, 'Plum juice', 400, 0);

INSERT INTO sales.customers (name, email)
SELECT 'Guest ' || n, 'guest' || n || '@example.com' FROM generate_series(1, 25) AS n;

INSERT INTO sales.orders (customer_id, table_number, status, placed_at)
SELECT
    CASE WHEN n % 4 = 0 THEN NULL ELSE 1 + n % 25 END,
    1 + n % 18,
    (ARRAY['paid', 'paid', 'paid', 'served', 'cooking', 'placed', 'cancelled']::sales.order_status[])[1 + n % 7],
    timestamptz '2026-01-01 17:00:00+00' + (n % 30) * interval '1 day' + (n % 5) * interval '37 minutes'
FROM generate_series(1, 120) AS n;

INSERT INTO sales.order_items (order_id, menu_item_id, quantity, unit_price_cents)
SELECT o.id, m.id, 1 + (o.id + m.id) % 3, m.price_cents
FROM sales.orders o JOIN menu.menu_items m ON (o.id + m.id) % 4 = 0;
